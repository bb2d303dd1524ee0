import type { Readiness } from '../../machines/ports.js';

/**
 * Readiness probes run *inside* the container with bash's /dev/tcp, so they test the service
 * where it listens (127.0.0.1 of the container) without publishing a port to the host and
 * without the host reaching into the bottle's networks. Port and path are passed as
 * positional arguments, never spliced into the script.
 */
const TCP_PROBE = 'exec 3<>"/dev/tcp/127.0.0.1/$1"';

const HTTP_PROBE = [
  'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1',
  'printf "GET %s HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n" "$2" >&3',
  'IFS= read -r status <&3 || exit 1',
  'case "$status" in "HTTP/1."[01]" "[23]*) exit 0 ;; esac',
  'exit 1',
].join('\n');

/** Seconds a single probe may take before it counts as a failed attempt. */
export const PROBE_TIMEOUT_SEC = 3;

export function probeCommand(readiness: Readiness): string[] | undefined {
  switch (readiness.kind) {
    case 'tcp':
      return ['timeout', String(PROBE_TIMEOUT_SEC), 'bash', '-c', TCP_PROBE, 'probe', String(readiness.port)];
    case 'http':
      return ['timeout', String(PROBE_TIMEOUT_SEC), 'bash', '-c', HTTP_PROBE, 'probe', String(readiness.port), readiness.path];
    default:
      return undefined;
  }
}

export function describeReadiness(readiness: Readiness): string {
  switch (readiness.kind) {
    case 'tcp':
      return `tcp port ${readiness.port}`;
    case 'http':
      return `http GET ${readiness.path} on port ${readiness.port}`;
    case 'log':
      return `log line matching /${readiness.pattern}/`;
    case 'running':
      return 'state running';
  }
}
