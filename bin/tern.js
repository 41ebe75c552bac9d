#!/usr/bin/env node
// Runs the TypeScript sources through tsx, so `npx tern …` and a global install behave like `npm start`.
import { register } from 'tsx/esm/api';

register();
await import('../src/cli.ts');
