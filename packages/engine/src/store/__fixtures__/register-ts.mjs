// `node --conditions=source --import <this file> child.mjs`: installs ts-hooks.mjs before the child starts.
import { register } from 'node:module';

register('./ts-hooks.mjs', import.meta.url);
