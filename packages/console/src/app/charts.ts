/**
 * Charts as plain SVG (no chart library): two shapes are all the overview needs, a column chart over time and a
 * bar chart of categories. Each chart is an `img` with a title and a text summary for screen readers, a tooltip
 * per bar, and its numbers in a table under a disclosure, so nothing is shown by colour or shape alone.
 */
import { h, svg, type Child } from './dom.js';

export interface Bar {
  readonly label: string;
  readonly value: number;
  /** CSS class of the bar (colour), e.g. `tone-ok`. */
  readonly tone?: string;
}

let chartSeq = 0;

/** Upper bound of the axis: 1, 2, 5, 10, 20, 50... at or above `max`. */
function niceMax(max: number): number {
  if (max <= 1) return 1;
  const exp = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 5, 10]) if (m * exp >= max) return m * exp;
  return 10 * exp;
}

function frame(title: string, summary: string, body: Child, table: HTMLTableElement): HTMLElement {
  return h(
    'figure',
    { class: 'chart' },
    h('figcaption', null, title),
    body,
    h('details', { class: 'chart-data' }, h('summary', null, 'Data as a table'), table),
    h('p', { class: 'visually-hidden' }, summary),
  );
}

function dataTable(caption: string, head: [string, string], rows: readonly Bar[]): HTMLTableElement {
  return h(
    'table',
    { class: 'data compact' },
    h('caption', { class: 'visually-hidden' }, caption),
    h('thead', null, h('tr', null, h('th', { scope: 'col' }, head[0]), h('th', { scope: 'col', class: 'num' }, head[1]))),
    h('tbody', null, rows.map((r) => h('tr', null, h('td', null, r.label), h('td', { class: 'num' }, r.value)))),
  );
}

/**
 * Columns over time (e.g. verified per minute), the last column being now. `tickEvery`: label every n-th column,
 * counted back from the last.
 */
export function columnChart(options: { title: string; unit: string; bars: readonly Bar[]; tickEvery?: number; empty?: string }): HTMLElement {
  const { title, unit, bars } = options;
  const id = `chart-${++chartSeq}`;
  const W = 640;
  const H = 200;
  const left = 40;
  const right = 8;
  const top = 12;
  const bottom = 26;
  const plotW = W - left - right;
  const plotH = H - top - bottom;
  const max = niceMax(Math.max(0, ...bars.map((b) => b.value)));
  const total = bars.reduce((n, b) => n + b.value, 0);
  const slot = plotW / Math.max(1, bars.length);
  const barW = Math.max(2, slot * 0.7);
  const y = (v: number): number => top + plotH - (v / max) * plotH;
  const tickEvery = options.tickEvery ?? 5;

  const grid = [0, max / 2, max].map((v) =>
    svg('g', { class: 'grid' },
      svg('line', { x1: left, x2: W - right, y1: y(v), y2: y(v) }),
      svg('text', { x: left - 6, y: y(v) + 4, 'text-anchor': 'end' }, Number.isInteger(v) ? v : v.toFixed(1)),
    ),
  );
  const columns = bars.map((b, i) => {
    const x = left + i * slot + (slot - barW) / 2;
    const height = Math.max(b.value > 0 ? 1 : 0, (b.value / max) * plotH);
    return svg('rect', { class: `bar ${b.tone ?? 'tone-ok'}`, x, y: top + plotH - height, width: barW, height },
      svg('title', null, `${b.label}: ${b.value} ${unit}`));
  });
  const ticks = bars.map((b, i) =>
    (bars.length - 1 - i) % tickEvery === 0
      ? svg('text', { class: 'tick', x: left + i * slot + slot / 2, y: H - 8, 'text-anchor': 'middle' }, b.label)
      : null,
  );
  const peak = Math.max(0, ...bars.map((b) => b.value));
  const summary = `${title}: ${total} ${unit} in total, at most ${peak} in one interval.`;
  const chart = svg('svg', { class: 'chart-svg', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': `${id}-t`, preserveAspectRatio: 'xMidYMid meet' },
    svg('title', { id: `${id}-t` }, summary),
    grid,
    columns,
    ticks,
    total === 0 ? svg('text', { class: 'empty', x: left + plotW / 2, y: top + plotH / 2, 'text-anchor': 'middle' }, options.empty ?? 'No data') : null,
  );
  return frame(title, summary, chart, dataTable(title, ['interval', unit], bars));
}

/** Horizontal bars of categories (e.g. attempt outcomes), largest first. */
export function barChart(options: { title: string; unit: string; bars: readonly Bar[]; empty?: string }): HTMLElement {
  const { title, unit } = options;
  const bars = [...options.bars].sort((a, b) => b.value - a.value);
  const id = `chart-${++chartSeq}`;
  const W = 640;
  const row = 26;
  const labelW = 230;
  const valueW = 56;
  const top = 6;
  const H = top * 2 + Math.max(1, bars.length) * row;
  const plotW = W - labelW - valueW;
  const max = Math.max(1, ...bars.map((b) => b.value));
  const total = bars.reduce((n, b) => n + b.value, 0);
  const rows = bars.map((b, i) => {
    const yy = top + i * row;
    const width = Math.max(b.value > 0 ? 2 : 0, (b.value / max) * plotW);
    return svg('g', null,
      svg('text', { class: 'label', x: labelW - 8, y: yy + row / 2 + 4, 'text-anchor': 'end' }, b.label),
      svg('rect', { class: `bar ${b.tone ?? 'tone-ok'}`, x: labelW, y: yy + 4, width, height: row - 8 },
        svg('title', null, `${b.label}: ${b.value} ${unit}`)),
      svg('text', { class: 'value', x: labelW + width + 6, y: yy + row / 2 + 4 }, b.value),
    );
  });
  const summary = bars.length === 0
    ? `${title}: none.`
    : `${title}: ${total} ${unit}; ${bars.map((b) => `${b.label} ${b.value}`).join(', ')}.`;
  const chart = svg('svg', { class: 'chart-svg', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': `${id}-t` },
    svg('title', { id: `${id}-t` }, summary),
    rows,
    bars.length === 0 ? svg('text', { class: 'empty', x: W / 2, y: H / 2 + 4, 'text-anchor': 'middle' }, options.empty ?? 'No data') : null,
  );
  return frame(title, summary, chart, dataTable(title, ['category', unit], bars));
}
