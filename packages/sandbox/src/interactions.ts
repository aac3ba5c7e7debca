/**
 * The interactions the sandbox distinguishes, for scope checks, fault matching and the write log.
 * Names follow the FHIR RESTful API (`search-type`, `history-instance`...).
 */
export const Interaction = {
  Read: 'read',
  Vread: 'vread',
  Update: 'update',
  Delete: 'delete',
  HistoryInstance: 'history-instance',
  HistoryType: 'history-type',
  Create: 'create',
  SearchType: 'search-type',
  Batch: 'batch',
  Transaction: 'transaction',
  Capabilities: 'capabilities',
} as const;
export type Interaction = (typeof Interaction)[keyof typeof Interaction];

/** Interactions that change server state. */
export const WRITE_INTERACTIONS: ReadonlySet<Interaction> = new Set<Interaction>([
  Interaction.Create,
  Interaction.Update,
  Interaction.Delete,
  Interaction.Batch,
  Interaction.Transaction,
]);
