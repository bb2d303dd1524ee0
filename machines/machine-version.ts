import { createHash } from 'node:crypto';
import type { AnyStateMachine, AnyStateNode, AnyTransitionDefinition } from 'xstate';

/**
 * A machine's version, derived from its definition: `<name>@<12 hex of sha256>` of the
 * canonical JSON of its structure. A recorded log is folded only by the machine that
 * wrote it, and a hand-kept constant is forgotten when the machine grows (this one was
 * 'bottle@1' through capability review and gateways). Computed once at module load from
 * strings only (ids, types, names), so the bundled CLI and the tests agree.
 *
 * What the structure cannot show is what the guards, the actions and planning compute; the
 * version's unit test pins a scripted fold for that, and a change there bumps `revision`.
 */

/** A guard or an action as the definition holds it: its name, and its params when they are data. */
function ref(x: unknown): unknown {
  if (typeof x === 'string') return x;
  if (typeof x === 'function') {
    // Built-ins (assign, raise, ...) carry their kind; an inline function is only "inline":
    // its source text differs between the bundle and the sources.
    const type = (x as { type?: unknown }).type;
    return typeof type === 'string' ? type : 'inline';
  }
  if (x && typeof x === 'object' && 'type' in x) {
    const { type, params } = x as { type: unknown; params?: unknown };
    if (params === undefined) return type;
    return { type, params: typeof params === 'function' ? 'dynamic' : params };
  }
  return String(x);
}

function transitionOf(t: AnyTransitionDefinition) {
  return {
    event: t.eventType,
    source: t.source.id,
    targets: t.target ? t.target.map((n) => n.id) : [],
    guard: t.guard === undefined ? null : ref(t.guard),
    actions: t.actions.map(ref),
    reenter: t.reenter,
  };
}

function nodeOf(node: AnyStateNode): unknown {
  const on = [...node.transitions.entries()].map(([event, ts]) => ({ event, transitions: ts.map(transitionOf) }));
  return {
    id: node.id,
    type: node.type,
    history: node.history,
    initial: node.type === 'compound' ? node.initial.target.map((n) => n.id) : null,
    entry: node.entry.map(ref),
    exit: node.exit.map(ref),
    invoke: node.invoke.map((i) => ({ id: i.id, src: typeof i.src === 'string' ? i.src : 'inline' })),
    on,
    always: (node.always ?? []).map(transitionOf),
    tags: [...node.tags],
    states: Object.values(node.states).map(nodeOf),
  };
}

/** The structure the version is a digest of: every state, transition, guard, action and invoke by name. */
export function machineStructure(machine: AnyStateMachine): unknown {
  const names = (o: object | undefined) => Object.keys(o ?? {}).sort();
  return {
    root: nodeOf(machine.root),
    implementations: {
      actors: names(machine.implementations.actors),
      actions: names(machine.implementations.actions),
      guards: names(machine.implementations.guards),
      delays: names(machine.implementations.delays),
    },
  };
}

/** JSON with object keys sorted, so the digest does not depend on property order. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/**
 * `revision` is the hand-kept part: bumped when what the guards and actions compute changes
 * while the structure stays the same, so that such a change moves the version too.
 */
export function machineVersion(name: string, machine: AnyStateMachine, revision: number): string {
  const digest = createHash('sha256').update(canonicalJson({ revision, structure: machineStructure(machine) })).digest('hex');
  return `${name}@${digest.slice(0, 12)}`;
}
