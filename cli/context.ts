import { homedir } from 'node:os';
import type { EngineContext } from '../engine/context.js';
import { bottleHome } from '../store/paths.js';

/** The engine's context from this process: the only reader of process.env besides cli/main.ts. */
export function cliContext(env: Record<string, string | undefined> = process.env): EngineContext {
  const homeDir = env.HOME ?? homedir();
  return { env, cwd: process.cwd(), homeDir, home: bottleHome(env, homeDir) };
}
