import { afterEach, describe, expect, it, vi } from 'vitest';
import { BottleError } from '../../../config/errors.js';
import { createDockerClient } from '../../../effects/docker/client.js';
import { checkStreamLines, classifyDockerError, daemonMessage } from '../../../effects/docker/errors.js';
import { DockerodeRuntime } from '../../../effects/docker/runtime.js';

/** What docker-modem rejects with for an HTTP status outside the endpoint's success codes. */
function httpError(status: number, reason: string, message: string): Error {
  return Object.assign(new Error(`(HTTP code ${status}) ${reason} - ${message} `), { statusCode: status, reason, json: { message } });
}

function socketError(code: string, address = '/var/run/docker.sock'): Error {
  return Object.assign(new Error(`connect ${code} ${address}`), { code, syscall: 'connect', address, errno: -2 });
}

afterEach(() => {
  vi.unstubAllEnvs();
});

describe('classifyDockerError', () => {
  it('a missing or refusing socket is DOCKER_UNREACHABLE with the way to start Docker', () => {
    for (const code of ['ENOENT', 'ECONNREFUSED']) {
      const err = classifyDockerError(socketError(code), { op: 'create container', object: 'bottle-x' });
      expect(err.code).toBe('DOCKER_UNREACHABLE');
      expect(err.message).toContain('/var/run/docker.sock');
      expect(err.message).toContain('create container bottle-x');
      expect(err.hint).toContain('bash scripts/docker-up.sh');
    }
  });

  it('EACCES on the socket is DOCKER_PERMISSION with the docker group hint', () => {
    const err = classifyDockerError(socketError('EACCES'), { op: 'list containers' });
    expect(err.code).toBe('DOCKER_PERMISSION');
    expect(err.hint).toMatch(/docker group/);
    expect(err.hint).toMatch(/sudo/);
  });

  it('404 for an image is IMAGE_MISSING pointing at `bottle images build`', () => {
    const err = classifyDockerError(httpError(404, 'no such container', 'No such image: bot-bottle/agent:abc'), { op: 'create container', object: 'bottle-x' });
    expect(err.code).toBe('IMAGE_MISSING');
    expect(err.message).toContain('bot-bottle/agent:abc');
    expect(err.hint).toContain('bottle images build');
    expect(classifyDockerError(httpError(404, 'no such image', 'whatever'), { op: 'inspect image', object: 'x:1' }).code).toBe('IMAGE_MISSING');
  });

  it('404 for something else is DOCKER_ERROR with the daemon message', () => {
    const err = classifyDockerError(httpError(404, 'no such container', 'No such container: bottle-y'), { op: 'start container', object: 'bottle-y' });
    expect(err.code).toBe('DOCKER_ERROR');
    expect(err.message).toBe('Docker could not start container bottle-y: No such container: bottle-y');
  });

  it('409 name conflicts are NAME_CONFLICT naming the cleanup commands', () => {
    const message = 'Conflict. The container name "/bottle-x" is already in use by container "abc". You have to remove (or rename) that container to be able to reuse that name.';
    const err = classifyDockerError(httpError(409, 'unexpected', message), { op: 'create container', object: 'bottle-x' });
    expect(err.code).toBe('NAME_CONFLICT');
    expect(err.hint).toContain('bottle cleanup');
    expect(err.hint).toContain('docker rm -f bottle-x');
    expect(classifyDockerError(httpError(409, 'unexpected', 'network with name n already exists'), { op: 'create network', object: 'n' }).code).toBe('NAME_CONFLICT');
  });

  it('other 409s and 500s are DOCKER_ERROR carrying the daemon words, not dockerode’s wrapper', () => {
    const busy = classifyDockerError(httpError(409, 'container stopped/paused', 'Container abc is not running'), { op: 'exec in container', object: 'c' });
    expect(busy.code).toBe('DOCKER_ERROR');
    const err = classifyDockerError(httpError(500, 'server error', 'Unknown runtime specified runsc'), { op: 'create container', object: 'c' });
    expect(err.code).toBe('DOCKER_ERROR');
    expect(err.message).toBe('Docker could not create container c: Unknown runtime specified runsc');
    expect(err.message).not.toContain('HTTP code');
  });

  it('keeps a BottleError and copes with odd values', () => {
    const original = new BottleError('SIDECAR_UNHEALTHY', 'x');
    expect(classifyDockerError(original, { op: 'wait' })).toBe(original);
    expect(classifyDockerError('boom', { op: 'do a thing' }).message).toBe('Docker could not do a thing: boom');
    expect(classifyDockerError(undefined, { op: 'do a thing' }).code).toBe('DOCKER_ERROR');
    expect(daemonMessage(Object.assign(new Error('(HTTP code 400) bad parameter - '), { statusCode: 400, json: Buffer.from('plain text body') }))).toBe('plain text body');
  });

  it('a mid-stream reset is not mistaken for a missing daemon', () => {
    const reset = Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET', syscall: 'read' });
    expect(classifyDockerError(reset, { op: 'attach to container', object: 'c' }).code).toBe('DOCKER_ERROR');
  });
});

describe('checkStreamLines', () => {
  it('finds errorDetail in raw chunks, objects, and chunks holding several lines', () => {
    const ok = '{"stream":"Step 1/2 : FROM base"}\n{"stream":" ---> abc"}\n';
    expect(checkStreamLines([ok])).toBeUndefined();
    expect(checkStreamLines([ok, '{"errorDetail":{"code":1,"message":"The command \'/bin/sh -c false\' returned a non-zero code: 1"},"error":"The command \'/bin/sh -c false\' returned a non-zero code: 1"}\n'])).toBe(
      "The command '/bin/sh -c false' returned a non-zero code: 1",
    );
    expect(checkStreamLines([{ status: 'Pulling' }, { error: 'pull access denied for x' }])).toBe('pull access denied for x');
    expect(checkStreamLines([Buffer.from('{"status":"a"}\n{"errorDetail":{"message":"no space left on device"}}\n')])).toBe('no space left on device');
    expect(checkStreamLines(['{"errorDetail":{}}'])).toBe('unknown error');
  });

  it('ignores partial lines and non-JSON noise', () => {
    expect(checkStreamLines(['{"stream":"half', 'not json at all', ''])).toBeUndefined();
  });
});

describe('createDockerClient', () => {
  it('uses the endpoint it is given, never DOCKER_HOST from the environment', () => {
    vi.stubEnv('DOCKER_HOST', 'tcp://127.0.0.1:1');
    const endpoint = (dockerHost?: string) => {
      const modem = createDockerClient(dockerHost === undefined ? {} : { dockerHost }).modem as unknown as Record<string, unknown>;
      return { socketPath: modem.socketPath, host: modem.host, port: modem.port === undefined ? undefined : String(modem.port), protocol: modem.protocol };
    };
    expect(endpoint()).toMatchObject({ socketPath: '/var/run/docker.sock', host: undefined });
    expect(endpoint('tcp://127.0.0.1:2375')).toEqual({ socketPath: undefined, host: '127.0.0.1', port: '2375', protocol: 'http' });
    expect(endpoint('unix:///tmp/d.sock').socketPath).toBe('/tmp/d.sock');
    expect(endpoint('tcp://127.0.0.1:2376').protocol).toBe('https');
  });

  it('rejects a DOCKER_HOST it cannot use as a usage error', () => {
    expect(() => createDockerClient({ dockerHost: 'ftp://x' })).toThrow(BottleError);
  });

  it('a socket that is not there surfaces as DOCKER_UNREACHABLE from the runtime', async () => {
    const rt = new DockerodeRuntime(createDockerClient({ dockerHost: 'unix:///nonexistent/bot-bottle-test.sock' }));
    const err = await rt.info().then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BottleError);
    expect((err as BottleError).code).toBe('DOCKER_UNREACHABLE');
    expect((err as BottleError).message).toContain('/nonexistent/bot-bottle-test.sock');
  });

  it('a refused loopback port is DOCKER_UNREACHABLE too', async () => {
    const rt = new DockerodeRuntime(createDockerClient({ dockerHost: 'tcp://127.0.0.1:1' }));
    await expect(rt.listLabelled({ x: 'y' })).rejects.toMatchObject({ code: 'DOCKER_UNREACHABLE' });
  });
});
