/** The full example from CONTRACT.md, verbatim. */
export const CONTRACT_EXAMPLE = `version: 1
bottles:
  web:                                   # a bottle profile
    image:                               # optional; default: the built-in agent image
      dockerfile: ./agent.Dockerfile     # path relative to the manifest, or:
      # ref: my/agent:1.2                # an image that already exists locally
    runtime: auto                        # auto | runsc | runc   (auto: runsc when the daemon has it)
    egress:
      allow:                             # host, host:port, or *.domain (subdomains only)
        - api.anthropic.com
        - registry.npmjs.org:443
    git:
      - name: origin                     # the remote name inside the bottle
        upstream: ssh://git@github.com/me/app.git   # ssh://, https:// or http://
        key: { file: ~/.ssh/bottle_ed25519 }        # secret ref: { file: PATH } or { env: NAME }
        known_hosts: { file: ~/.ssh/known_hosts }   # for ssh upstreams
        push: ["agent/*"]                # ref patterns (branch names, glob) the agent may push; [] = read-only
        # token: { env: GIT_TOKEN }      # for https:// upstreams instead of key; ca: as for routes
    cred_proxy:
      routes:
        - path: /anthropic               # prefix on the cred-proxy
          upstream: https://api.anthropic.com   # https:// or http:// (internal services)
          token: { env: ANTHROPIC_API_KEY }         # secret ref
          inject: { header: x-api-key, format: "{token}" }   # e.g. Authorization / "Bearer {token}"
          roles: [anthropic-base-url]    # at most one route in a bottle has this role
          # ca: { file: ./internal-ca.pem }  # optional extra CA bundle trusted for this upstream
    supervise: true                      # run the supervise sidecar
    env:
      LOG_LEVEL: { value: debug }        # literal; must not contain a newline
      GH_USER: { from_host: GH_USER }    # forwarded by name; value never on argv or in a file
agents:
  coder:
    bottle: web
    prompt: "Make the failing tests pass."   # or prompt_file: ./prompt.md
    command: ["claude", "--dangerously-skip-permissions"]   # default: the image's CMD
    skills: [./skills/review]            # folders copied into the agent's skills dir
`;

/** A small valid document to break one piece at a time. */
export function minimalDoc(): Record<string, unknown> {
  return {
    version: 1,
    bottles: { web: {} },
    agents: { coder: { bottle: 'web' } },
  };
}

export function route(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    path: '/anthropic',
    upstream: 'https://api.anthropic.com',
    token: { env: 'ANTHROPIC_API_KEY' },
    inject: { header: 'x-api-key', format: '{token}' },
    ...overrides,
  };
}

export function remote(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name: 'origin',
    upstream: 'https://git.example.com/me/app.git',
    token: { env: 'GIT_TOKEN' },
    push: ['agent/*'],
    ...overrides,
  };
}

/** A document with one bottle `web` whose profile is `profile`. */
export function withBottle(profile: Record<string, unknown>): Record<string, unknown> {
  return { ...minimalDoc(), bottles: { web: profile } };
}
