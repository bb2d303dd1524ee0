import Docker from 'dockerode';
import { BottleError } from '../../config/errors.js';

export interface DockerClientOptions {
  /**
   * DOCKER_HOST as the user gave it (`unix:///path`, `tcp://host:port`, `http(s)://…`,
   * `ssh://user@host`), read by cli/ or config/. Unset means the local daemon socket.
   */
  dockerHost?: string;
  /** Client certificate material for a TLS endpoint (what DOCKER_CERT_PATH holds), read by the caller. */
  tls?: { ca?: string | Buffer; cert?: string | Buffer; key?: string | Buffer };
}

export const DEFAULT_SOCKET = '/var/run/docker.sock';

/**
 * A dockerode client for one Docker endpoint. There is no shared instance: every caller
 * builds its own from explicit options, so nothing in the engine depends on hidden state.
 */
export function createDockerClient(options: DockerClientOptions = {}): Docker {
  const endpoint = endpointOptions(options.dockerHost);
  const tls = options.tls;
  if (tls && endpoint.protocol !== 'ssh' && endpoint.host !== undefined) {
    return new Docker({ ...endpoint, protocol: 'https', ca: tls.ca, cert: tls.cert, key: tls.key });
  }
  return new Docker(endpoint);
}

/**
 * docker-modem fills its defaults from DOCKER_HOST / DOCKER_CERT_PATH in the environment and
 * merges ours over them, so every endpoint field is set here, `undefined` included: the
 * endpoint is what the caller passed, never what happens to be in this process's env.
 */
function endpointOptions(dockerHost: string | undefined): Docker.DockerOptions {
  const cleared: Docker.DockerOptions = {
    socketPath: undefined,
    host: undefined,
    port: undefined,
    protocol: undefined,
    ca: undefined,
    cert: undefined,
    key: undefined,
  };
  if (dockerHost === undefined || dockerHost === '') return { ...cleared, socketPath: DEFAULT_SOCKET };
  if (dockerHost.startsWith('unix://')) return { ...cleared, socketPath: dockerHost.slice('unix://'.length) || DEFAULT_SOCKET };
  if (dockerHost.startsWith('/')) return { ...cleared, socketPath: dockerHost };

  const text = dockerHost.includes('://') ? dockerHost : `tcp://${dockerHost}`;
  if (!URL.canParse(text)) throw unusable(dockerHost, 'it is not a URL');
  const url = new URL(text);
  const scheme = url.protocol.replace(/:$/, '');
  if (scheme === 'ssh') {
    return { ...cleared, protocol: 'ssh', host: url.hostname, port: url.port || 22, username: url.username || undefined };
  }
  const https = scheme === 'https' || url.port === '2376';
  if (scheme !== 'tcp' && scheme !== 'http' && scheme !== 'https') throw unusable(dockerHost, `the scheme '${scheme}' is not supported`);
  return { ...cleared, protocol: https ? 'https' : 'http', host: url.hostname, port: url.port || (https ? 2376 : 2375) };
}

function unusable(dockerHost: string, why: string): BottleError {
  return new BottleError(
    'USAGE',
    `DOCKER_HOST '${dockerHost}' cannot be used: ${why}`,
    'Set DOCKER_HOST to unix:///var/run/docker.sock, tcp://HOST:PORT or ssh://USER@HOST, or unset it.',
  );
}
