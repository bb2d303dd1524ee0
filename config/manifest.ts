/**
 * The manifest (`bottle.yaml`): its zod schema and a pure validator that reports every
 * problem at once, each with the path of the offending value.
 *
 * ManifestSchema checks each value on its own; rules that relate values to each other
 * (an agent's bottle exists, route paths are unique, ...) live in validateManifest, which is
 * the entry point everything else should use.
 */
import { z } from 'zod';
import { checkAddress, literalHost, privateBlocks, privateNetworkProblem, refusalText } from './address-policy.js';
import {
  envNameProblem,
  envValueProblem,
  gitRemoteNameProblem,
  gitUpstreamProblem,
  headerNameProblem,
  injectFormatProblem,
  parseEgressEntry,
  pathProblem,
  refPatternProblem,
  routePathKey,
  routePathProblem,
  routeRoleProblem,
  routeUpstreamProblem,
  urlScheme,
} from './field-rules.js';

export interface ManifestIssue {
  /** Where the problem is, as in `bottles.web.egress.allow[2]`; `(root)` for the whole document. */
  path: string;
  message: string;
}

type PathSegment = PropertyKey;

/** A string schema whose extra rule is a plain function returning a message or undefined. */
export function checkedString(problem: (value: string) => string | undefined) {
  return z.string().superRefine((value, ctx) => {
    const message = problem(value);
    if (message !== undefined) ctx.addIssue({ code: 'custom', message });
  });
}

/** Unknown keys are errors everywhere; the message lists what is allowed at that place. */
export function strict<T extends z.core.$ZodLooseShape>(shape: T) {
  const allowed = Object.keys(shape).join(', ');
  return z.strictObject(shape, {
    error: (iss) => (iss.code === 'unrecognized_keys' ? `unknown key (allowed here: ${allowed})` : undefined),
  });
}

/**
 * For `{ a } | { b }` objects: the union is spelled as one strict object so errors keep
 * precise paths. The transform that follows only runs when this check passed, so there
 * exactly one of the two is set.
 */
function exactlyOneOf(a: string, b: string) {
  return (value: Record<string, unknown>, ctx: z.RefinementCtx) => {
    const count = (value[a] !== undefined ? 1 : 0) + (value[b] !== undefined ? 1 : 0);
    if (count !== 1) {
      ctx.addIssue({
        code: 'custom',
        message: count === 0 ? `needs one of ${a} or ${b}` : `set only one of ${a} or ${b}`,
      });
    }
  };
}

const PathString = checkedString(pathProblem);
const EnvName = checkedString(envNameProblem);
const Name = z.string().min(1);

export type SecretRef = { file: string } | { env: string };
export type EnvEntry = { value: string } | { from_host: string };
export type ImageRef = { dockerfile: string } | { ref: string };

const SecretRefSchema = strict({ file: PathString.optional(), env: EnvName.optional() })
  .superRefine(exactlyOneOf('file', 'env'))
  .transform((r): SecretRef => (r.file !== undefined ? { file: r.file } : { env: r.env ?? '' }));

/** A CA bundle is public material, but only ever read from a file. */
const CaRefSchema = strict({ file: PathString });

const EnvEntrySchema = strict({ value: checkedString(envValueProblem).optional(), from_host: EnvName.optional() })
  .superRefine(exactlyOneOf('value', 'from_host'))
  .transform((e): EnvEntry => (e.value !== undefined ? { value: e.value } : { from_host: e.from_host ?? '' }));

const ImageRefSchema = strict({
  dockerfile: PathString.optional(),
  ref: checkedString((ref) => (/^\S+$/.test(ref) ? undefined : 'must be a non-empty image reference without spaces')).optional(),
})
  .superRefine(exactlyOneOf('dockerfile', 'ref'))
  .transform((i): ImageRef => (i.dockerfile !== undefined ? { dockerfile: i.dockerfile } : { ref: i.ref ?? '' }));

const EgressEntrySchema = z.string().transform((raw, ctx) => {
  const parsed = parseEgressEntry(raw);
  if (parsed.ok) return parsed.entry;
  ctx.addIssue({ code: 'custom', message: parsed.message });
  return z.NEVER;
});

const RouteSchema = strict({
  path: checkedString(routePathProblem),
  upstream: checkedString(routeUpstreamProblem),
  token: SecretRefSchema,
  inject: strict({ header: checkedString(headerNameProblem), format: checkedString(injectFormatProblem) }),
  roles: z.array(checkedString(routeRoleProblem)).default(() => []),
  ca: CaRefSchema.optional(),
});

const GitRemoteSchema = strict({
  name: checkedString(gitRemoteNameProblem),
  upstream: checkedString(gitUpstreamProblem),
  key: SecretRefSchema.optional(),
  known_hosts: SecretRefSchema.optional(),
  token: SecretRefSchema.optional(),
  ca: CaRefSchema.optional(),
  // Read-only unless the user names what the agent may push.
  push: z.array(checkedString(refPatternProblem)).default(() => []),
});

/**
 * Sizes as Docker writes them: a whole number of bytes, or a number with k, m, g or t
 * (binary: 1k = 1024), optionally followed by b or ib (`512m`, `2g`, `1.5GiB`).
 */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) return undefined;
  const scale = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const bytes = Math.floor(Number(m[1]) * scale);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

function sizeSchema(min: number, minText: string) {
  return z.union([z.number(), z.string()]).transform((raw, ctx) => {
    const bytes = typeof raw === 'number' ? (Number.isSafeInteger(raw) ? raw : undefined) : parseSize(raw);
    if (bytes === undefined) {
      ctx.addIssue({ code: 'custom', message: `must be a size such as 512m or 2g (a number of bytes, or with k, m, g or t), got ${JSON.stringify(raw)}` });
      return z.NEVER;
    }
    if (bytes < min) {
      ctx.addIssue({ code: 'custom', message: `must be at least ${minText}` });
      return z.NEVER;
    }
    return bytes;
  });
}

/** CPU cores, as Docker's --cpus: a fraction is a share of one core. */
const CpusSchema = z
  .number({ error: 'must be a number of CPU cores, such as 1 or 0.5' })
  .min(0.01, 'must be at least 0.01 (a hundredth of a core)')
  .max(1024, 'must be at most 1024');
const PidsSchema = z
  .number({ error: 'must be a whole number of processes' })
  .int('must be a whole number of processes')
  .min(16, 'must be at least 16 (the agent needs a shell, git and its own helpers)')
  .max(4194304, 'must be at most 4194304');

const ResourcesSchema = strict({
  /** The agent's CPU quota in cores. */
  cpus: CpusSchema.optional(),
  memory: sizeSchema(32 * 1024 ** 2, '32m').optional(),
  pids: PidsSchema.optional(),
  disk: strict({
    /** The size of /workspace (a tmpfs-backed volume: it counts as the agent's memory too). */
    workspace: sizeSchema(1024 ** 2, '1m').optional(),
    /** The size of /tmp (a tmpfs). */
    tmp: sizeSchema(1024 ** 2, '1m').optional(),
    /** The container's root filesystem; needs a storage driver with quotas (overlay2 on xfs with pquota). */
    root: sizeSchema(64 * 1024 ** 2, '64m').optional(),
  }).optional(),
  /** The same limits for each sidecar. */
  sidecars: strict({ cpus: CpusSchema.optional(), memory: sizeSchema(32 * 1024 ** 2, '32m').optional(), pids: PidsSchema.optional() }).optional(),
  proposals: strict({
    pending: z.number().int('must be a whole number').min(1, 'must be at least 1').max(1000, 'must be at most 1000').optional(),
    per_minute: z.number().int('must be a whole number').min(1, 'must be at least 1').max(6000, 'must be at most 6000').optional(),
  }).optional(),
});

export type Resources = z.output<typeof ResourcesSchema>;

const BottleProfileSchema = strict({
  image: ImageRefSchema.optional(),
  runtime: z.enum(['auto', 'runsc', 'runc']).default('auto'),
  egress: strict({ allow: z.array(EgressEntrySchema).default(() => []) }).default(() => ({ allow: [] })),
  git: z.array(GitRemoteSchema).default(() => []),
  cred_proxy: strict({ routes: z.array(RouteSchema).default(() => []) }).default(() => ({ routes: [] })),
  supervise: z.boolean().default(false),
  // Non-global destinations (CIDR blocks) the sidecars may dial; default none (config/address-policy.ts).
  private_networks: z.array(checkedString(privateNetworkProblem)).default(() => []),
  env: z.record(EnvName, EnvEntrySchema).default(() => ({})),
  /** Absent: the defaults of machines/plan.ts (resourceLimits). */
  resources: ResourcesSchema.optional(),
});

const AgentSpecSchema = strict({
  bottle: Name,
  /** Absent together with prompt_file: the agent gets an empty prompt. */
  prompt: z.string().optional(),
  prompt_file: PathString.optional(),
  /** Absent: the image's CMD. */
  // A NUL cannot be passed to exec: refused here rather than by the container at start.
  command: z.array(z.string().min(1).refine((a) => !a.includes('\0'), 'must not contain a NUL character')).min(1).optional(),
  skills: z.array(PathString).default(() => []),
});

export const ManifestSchema = z.strictObject(
  {
    version: z.literal(1, {
      error: (iss) =>
        iss.input === undefined ? 'required: this bot-bottle reads version: 1' : 'unsupported version; this bot-bottle reads version: 1',
    }),
    bottles: z.record(Name, BottleProfileSchema),
    agents: z.record(Name, AgentSpecSchema),
  },
  {
    error: (iss) => {
      if (iss.code === 'unrecognized_keys') return 'unknown key (allowed here: version, bottles, agents)';
      if (iss.code === 'invalid_type') return 'expected a mapping with version, bottles and agents';
      return undefined;
    },
  },
);

export type Manifest = z.output<typeof ManifestSchema>;
export type BottleProfile = z.output<typeof BottleProfileSchema>;
export type AgentSpec = z.output<typeof AgentSpecSchema>;
export type Route = z.output<typeof RouteSchema>;
export type GitRemote = z.output<typeof GitRemoteSchema>;

export type ValidationResult = { ok: true; manifest: Manifest } | { ok: false; issues: ManifestIssue[] };

/** Validates a parsed YAML/JSON document. Pure, never throws, reports every problem. */
export function validateManifest(doc: unknown): ValidationResult {
  const issues: RawIssue[] = [];
  const parsed = ManifestSchema.safeParse(doc, { error: friendlyMessage });
  if (!parsed.success) {
    for (const iss of parsed.error.issues) issues.push(...fromZodIssue(iss));
  }
  // Cross-field rules read the raw document so that they still run where the schema failed.
  issues.push(...crossFieldIssues(doc));
  if (parsed.success && issues.length === 0) return { ok: true, manifest: parsed.data };
  return { ok: false, issues: issues.map((i) => ({ path: formatPath(i.path), message: i.message })) };
}

interface RawIssue {
  path: readonly PathSegment[];
  message: string;
}

function fromZodIssue(iss: z.core.$ZodIssue): RawIssue[] {
  if (iss.code === 'unrecognized_keys') {
    return iss.keys.map((key) => ({ path: [...iss.path, key], message: iss.message }));
  }
  if (iss.code === 'invalid_key') {
    return iss.issues.map((inner) => ({ path: iss.path, message: `invalid name: ${inner.message}` }));
  }
  return [{ path: iss.path, message: iss.message }];
}

/** Messages in the words of a YAML author; falls back to zod's own for everything else. */
function friendlyMessage(iss: z.core.$ZodRawIssue): string | undefined {
  if (iss.code === 'invalid_type') {
    const expected = describeExpected(String(iss.expected));
    if (iss.input === undefined) return `required (${expected})`;
    const quote = expected === 'a string' && (typeof iss.input === 'number' || typeof iss.input === 'boolean');
    return `expected ${expected}, got ${describeValue(iss.input)}${quote ? ' (quote it in YAML)' : ''}`;
  }
  if (iss.code === 'too_small' && iss.minimum === 1 && (iss.origin === 'string' || iss.origin === 'array')) {
    return 'must not be empty';
  }
  return undefined;
}

function describeExpected(expected: string): string {
  switch (expected) {
    case 'object':
    case 'record':
      return 'a mapping';
    case 'array':
      return 'a list';
    case 'string':
    case 'number':
    case 'boolean':
      return `a ${expected}`;
    default:
      return expected;
  }
}

/** Names a value's kind without stringifying it (it may be anything, even a null-prototype object). */
function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  return `a ${typeof value}`;
}

/** `['bottles', 'web', 'egress', 'allow', 2]` → `bottles.web.egress.allow[2]`. */
export function formatPath(path: readonly PathSegment[]): string {
  let out = '';
  for (const segment of path) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else if (typeof segment === 'symbol') out += `[${String(segment)}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(segment)) out += out === '' ? segment : `.${segment}`;
    else out += `[${JSON.stringify(segment)}]`;
  }
  return out === '' ? '(root)' : out;
}

type Json = Record<string, unknown>;

function isRecord(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function entries(value: unknown): [string, unknown][] {
  return isRecord(value) ? Object.entries(value) : [];
}

function items(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

/**
 * Rules across values, run on the raw document: every check guards the shape it reads and
 * skips what the schema already reports as malformed.
 */
function crossFieldIssues(doc: unknown): RawIssue[] {
  const issues: RawIssue[] = [];
  const add = (path: readonly PathSegment[], message: string) => issues.push({ path, message });
  if (!isRecord(doc)) return issues;

  const bottles = isRecord(doc.bottles) ? doc.bottles : undefined;
  const bottleNames = bottles === undefined ? [] : Object.keys(bottles).filter((n) => n !== '__proto__');

  for (const map of ['bottles', 'agents'] as const) {
    reservedNames(doc[map], [map], add);
  }

  for (const [name, agent] of entries(doc.agents)) {
    if (!isRecord(agent)) continue;
    const bottle = agent.bottle;
    if (bottles !== undefined && typeof bottle === 'string' && bottle !== '' && !Object.hasOwn(bottles, bottle)) {
      const known = bottleNames.length > 0 ? `defined: ${bottleNames.join(', ')}` : 'no bottles are defined';
      add(['agents', name, 'bottle'], `no bottle named ${JSON.stringify(bottle)} (${known})`);
    }
    if (agent.prompt !== undefined && agent.prompt_file !== undefined) {
      add(['agents', name], 'set either prompt or prompt_file, not both');
    }
  }

  for (const [name, bottle] of entries(bottles)) {
    if (!isRecord(bottle)) continue;
    const at = ['bottles', name];
    reservedNames(bottle.env, [...at, 'env'], add);
    routeIssues(isRecord(bottle.cred_proxy) ? bottle.cred_proxy.routes : undefined, [...at, 'cred_proxy', 'routes'], add);
    gitIssues(bottle.git, [...at, 'git'], add);
    upstreamAddressIssues(name, bottle, add);
  }
  return issues;
}

type Add = (path: readonly PathSegment[], message: string) => void;

/**
 * An upstream written as a literal address is judged here, as its sidecar would judge it:
 * private and not in private_networks, or never dialable at all (loopback, metadata, ...),
 * fails validation instead of every request. A name is judged at plan and approval time
 * (resolved on the host) and by the sidecar at every dial.
 */
function upstreamAddressIssues(name: string, bottle: Record<string, unknown>, add: Add): void {
  const entries = Array.isArray(bottle.private_networks) && bottle.private_networks.every((e) => typeof e === 'string') ? (bottle.private_networks as string[]) : [];
  const allow = privateBlocks(entries.filter((e) => privateNetworkProblem(e) === undefined));
  const check = (upstream: unknown, path: readonly PathSegment[], who: string) => {
    if (typeof upstream !== 'string') return;
    const host = literalHost(upstream);
    if (host === undefined) return;
    const v = checkAddress(host, { allow });
    if (!v.ok) add(path, refusalText(v, who, name));
  };
  const routes = isRecord(bottle.cred_proxy) ? items(bottle.cred_proxy.routes) : [];
  routes.forEach((r, i) => {
    if (isRecord(r)) check(r.upstream, ['bottles', name, 'cred_proxy', 'routes', i, 'upstream'], 'the cred-proxy');
  });
  items(bottle.git).forEach((r, i) => {
    if (isRecord(r)) check(r.upstream, ['bottles', name, 'git', i, 'upstream'], 'the git gate');
  });
}

/**
 * zod drops a `__proto__` key from records without a word (assigning it would replace the
 * result's prototype), so a bottle, agent or env entry of that name would vanish silently.
 */
function reservedNames(map: unknown, at: readonly PathSegment[], add: Add): void {
  if (isRecord(map) && Object.hasOwn(map, '__proto__')) add([...at, '__proto__'], 'this name is reserved');
}

function routeIssues(routes: unknown, at: readonly PathSegment[], add: Add): void {
  const firstByPath = new Map<string, number>();
  let baseUrlRoute: number | undefined;
  items(routes).forEach((route, i) => {
    if (!isRecord(route)) return;
    if (typeof route.path === 'string') {
      const key = routePathKey(route.path);
      const first = firstByPath.get(key);
      if (first === undefined) firstByPath.set(key, i);
      else add([...at, i, 'path'], `duplicate route path (same as routes[${first}])`);
    }
    if (Array.isArray(route.roles) && route.roles.includes('anthropic-base-url')) {
      if (baseUrlRoute === undefined) baseUrlRoute = i;
      else add([...at, i, 'roles'], `only one route per bottle may have role anthropic-base-url (routes[${baseUrlRoute}] has it)`);
    }
  });
}

function gitIssues(remotes: unknown, at: readonly PathSegment[], add: Add): void {
  const firstByName = new Map<string, number>();
  items(remotes).forEach((remote, i) => {
    if (!isRecord(remote)) return;
    if (typeof remote.name === 'string') {
      const first = firstByName.get(remote.name);
      if (first === undefined) firstByName.set(remote.name, i);
      else add([...at, i, 'name'], `duplicate remote name (same as git[${first}])`);
    }
    // Secrets that do not fit the transport would be staged into the git gate and never used.
    const scheme = urlScheme(remote.upstream);
    if (scheme === 'ssh:') {
      if (remote.key === undefined) add([...at, i, 'key'], 'required for an ssh:// upstream');
      // The gate checks the upstream's host key strictly: without known_hosts every fetch fails.
      if (remote.known_hosts === undefined) add([...at, i, 'known_hosts'], 'required for an ssh:// upstream (the gate checks its host key); e.g. { file: ~/.ssh/known_hosts }');
      for (const field of ['token', 'ca'] as const) {
        if (remote[field] !== undefined) add([...at, i, field], 'only for https:// and http:// upstreams');
      }
    } else if (scheme === 'https:' || scheme === 'http:') {
      for (const field of ['key', 'known_hosts'] as const) {
        if (remote[field] !== undefined) add([...at, i, field], 'only for ssh:// upstreams (use token for https://)');
      }
    }
  });
}
