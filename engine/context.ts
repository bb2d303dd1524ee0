/**
 * What every engine call knows about where it runs: the environment (as the CLI read it; the
 * engine never reads process.env itself), the working folder, the user's home and BOTTLE_HOME.
 */
export interface EngineContext {
  env: Record<string, string | undefined>;
  cwd: string;
  homeDir: string;
  home: string;
}
