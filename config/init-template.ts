/**
 * `bottle init`: a commented example manifest that runs as it is (a script agent, no secrets)
 * and shows every other key commented out.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BottleError } from './errors.js';
import { describeFsError, errorCode } from './files.js';
import { findManifest, MANIFEST_NAMES } from './load.js';

// String.raw keeps the YAML escapes (\") inside the command as they are.
export const INIT_TEMPLATE = String.raw`# bottle.yaml: which agent runs in which bottle, and the only ways out of it.
#   bottle validate      check this file
#   bottle plan demo     show what would be created, without creating anything
#   bottle run demo      run the demo agent
version: 1

bottles:
  demo:                                    # a bottle profile
    # image:                               # default: the built-in agent image
    #   dockerfile: ./agent.Dockerfile     # a path relative to this file, or:
    #   ref: my/agent:1.2                  # an image that already exists locally
    runtime: auto                          # auto | runsc | runc   (auto: runsc when Docker has it)
    egress:
      allow: []                            # hosts the agent may reach, none yet; for example:
      # allow:
      #   - api.anthropic.com              # a host,
      #   - registry.npmjs.org:443         # host:port,
      #   - "*.githubusercontent.com"      # or *.domain (subdomains only; quote it, * is YAML syntax)
    # git:                                 # remotes the agent reaches through the git gate
    #   - name: origin                     # the remote's name inside the bottle
    #     upstream: ssh://git@github.com/me/app.git   # ssh://, https:// or http://
    #     key: { file: ~/.ssh/bottle_ed25519 }        # secret ref: { file: PATH } or { env: NAME }
    #     known_hosts: { file: ~/.ssh/known_hosts }   # required for ssh:// upstreams
    #     push: ["agent/*"]                # branches (globs) the agent may push; [] = read-only
    #     # token: { env: GIT_TOKEN }      # for https:// upstreams, instead of key
    #     # ca: { file: ./internal-ca.pem }  # an extra CA bundle for an https:// upstream
    # cred_proxy:                          # the agent calls these; the proxy adds the real token
    #   routes:
    #     - path: /anthropic               # prefix on the cred-proxy
    #       upstream: https://api.anthropic.com   # https:// or http:// (internal services)
    #       token: { env: ANTHROPIC_API_KEY }     # secret ref; the agent only sees a placeholder
    #       inject: { header: x-api-key, format: "{token}" }   # or Authorization / "Bearer {token}"
    #       roles: [anthropic-base-url]    # sets ANTHROPIC_BASE_URL; one route per bottle at most
    #       # ca: { file: ./internal-ca.pem }   # an extra CA bundle trusted for this upstream
    supervise: false                       # true: the agent may propose changes for you to approve
    # private_networks: ["10.20.0.0/16"]  # private blocks the sidecars may dial (internal services);
    #                                      # default none; the Docker host's addresses never
    env:
      GREETING: { value: hello }           # a literal; must not contain a newline
      # GH_USER: { from_host: GH_USER }    # forwarded from your shell by name, never written down

agents:
  demo:
    bottle: demo
    prompt: "Say hello."                   # or prompt_file: ./prompt.md
    # A script agent, so this example needs no API key. For Claude Code, use a cred_proxy route
    # with role anthropic-base-url and: command: ["claude", "--dangerously-skip-permissions"]
    command: ["bash", "-c", "echo \"$GREETING from the bottle\"; cat \"$BOTTLE_PROMPT_FILE\""]   # default: the image's CMD
    # skills: [./skills/review]            # folders copied into the agent's skills folder
`;

/** Writes INIT_TEMPLATE as `dir/bottle.yaml`; never replaces an existing manifest. Returns its path. */
export async function writeInitManifest(dir: string): Promise<string> {
  const existing = findExisting(dir);
  if (existing !== undefined) throw alreadyThere(existing);
  const file = join(dir, MANIFEST_NAMES[0]);
  try {
    // 'wx' fails if the file appeared since the check: the refusal holds even under a race.
    await writeFile(file, INIT_TEMPLATE, { flag: 'wx' });
  } catch (err) {
    if (errorCode(err) === 'EEXIST') throw alreadyThere(file);
    throw new BottleError('USAGE', `cannot write ${file}: ${describeFsError(err)}`, 'Try: run bottle init in a folder you can write to');
  }
  return file;
}

/** Either name counts: a new bottle.yaml would shadow an existing bottle.yml. */
function findExisting(dir: string): string | undefined {
  try {
    return findManifest(dir);
  } catch (err) {
    if (err instanceof BottleError && err.code === 'MANIFEST_NOT_FOUND') return undefined;
    throw err;
  }
}

function alreadyThere(file: string): BottleError {
  return new BottleError('USAGE', `${file} already exists; bottle init never overwrites a manifest`, 'Try: `bottle validate` to check it, or move it away and run `bottle init` again');
}
