import { homedir } from 'node:os';
import { resolve } from 'node:path';

/**
 * Resolves a path written in the manifest: a leading `~` or `~/` is the home folder,
 * anything else relative is relative to the manifest's folder (never the current one,
 * so a manifest means the same thing wherever `bottle` is run from).
 */
export function resolveManifestPath(dir: string, p: string, homeDir: string = homedir()): string {
  if (p === '~') return homeDir;
  if (p.startsWith('~/')) return resolve(homeDir, p.slice(2));
  return resolve(dir, p);
}

const FS_REASONS: Record<string, string> = {
  ENOENT: 'no such file',
  ENOTDIR: 'a parent is not a folder',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EISDIR: 'is a folder',
  ELOOP: 'too many symbolic links',
};

/** The OS reason of a failed file operation, in words, with its code. */
export function describeFsError(err: unknown): string {
  const code = errorCode(err);
  if (code !== undefined) return `${FS_REASONS[code] ?? 'cannot be read'} (${code})`;
  return err instanceof Error ? err.message : 'cannot be read';
}

/** The `code` of a Node system error (`ENOENT`, ...). */
export function errorCode(err: unknown): string | undefined {
  return err instanceof Error && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}
