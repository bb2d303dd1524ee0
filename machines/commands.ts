import { z } from 'zod';
import type { BottleEvent } from './bottle.machine.js';

/**
 * What `bottle approve|deny|stop` (and the supervise queue) write into a run's mailbox: one
 * type, checked with this schema when the owner reads a command file. A file that fails it
 * (an approve without a proposal, an unknown type, a stray key) is quarantined and reported;
 * it never reaches the log or the machine.
 */

const id = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/);
const text = (max: number) => z.string().max(max);

export const MailboxCommandSchema = z.discriminatedUnion('type', [
  z.strictObject({ id, type: z.literal('stop'), reason: text(200).optional() }),
  z.strictObject({
    id,
    type: z.literal('approve'),
    proposal: id,
    by: text(200).min(1),
    /** `env:NAME` or `file:PATH`: the ref's name, never the secret. */
    secretRef: text(4096).regex(/^(env|file):./).optional(),
    /** `<length>:<sha256 hex>` of a route's secret, for the egress canary. */
    secretHash: z.string().regex(/^\d+:[0-9a-f]{64}$/).optional(),
  }),
  z.strictObject({ id, type: z.literal('deny'), proposal: id, by: text(200).min(1), reason: text(2000).optional() }),
  z.strictObject({
    id,
    type: z.literal('propose'),
    proposal: z.strictObject({
      id,
      kind: z.enum(['dockerfile', 'allowlist', 'route']),
      reason: text(2000).min(1),
      change: z.record(z.string(), z.unknown()),
    }),
  }),
]);

export type MailboxCommand = z.infer<typeof MailboxCommandSchema>;

/** The machine event a command becomes; `at` is the owner's clock when it took the command. */
export function toMachineEvent(cmd: MailboxCommand, at: number): BottleEvent {
  switch (cmd.type) {
    case 'stop':
      return { type: 'command.stop', commandId: cmd.id, ...(cmd.reason ? { reason: cmd.reason } : {}) };
    case 'approve':
      return {
        type: 'proposal.approve',
        commandId: cmd.id,
        id: cmd.proposal,
        by: cmd.by,
        at,
        ...(cmd.secretRef ? { secretRef: cmd.secretRef } : {}),
        ...(cmd.secretHash ? { secretHash: cmd.secretHash } : {}),
      };
    case 'deny':
      return { type: 'proposal.deny', commandId: cmd.id, id: cmd.proposal, by: cmd.by, at, ...(cmd.reason ? { reason: cmd.reason } : {}) };
    case 'propose':
      return { type: 'proposal.received', proposal: cmd.proposal, at };
  }
}
