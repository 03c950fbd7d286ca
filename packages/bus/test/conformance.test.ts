import { busConformance } from './conformance/index.js';
import { makeBus } from './helpers.js';

busConformance('SqliteBus on :memory:', async () => makeBus('memory'));
busConformance('SqliteBus on a file', async () => makeBus('file'));
