import { busConformance } from './conformance/index.js';
import { makeBus } from './helpers.js';

busConformance(() => makeBus('memory'), 'SqliteBus on :memory:');
busConformance(() => makeBus('file'), 'SqliteBus on a file');
