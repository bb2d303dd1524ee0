import type { BottleEvent, ProposalKind } from '../machines/bottle.machine.js';

/** What `bottle approve|deny|stop` (and the supervise queue) write into a run's mailbox. */
export type MailboxCommand =
  | { id: string; type: 'stop'; reason?: string }
  | { id: string; type: 'approve'; proposal: string; by: string; secretRef?: string; secretHash?: string }
  | { id: string; type: 'deny'; proposal: string; by: string; reason?: string }
  | { id: string; type: 'propose'; proposal: { id: string; kind: ProposalKind; reason: string; change: Record<string, unknown> } };

export function toMachineEvent(cmd: MailboxCommand, at: number): BottleEvent {
  switch (cmd.type) {
    case 'stop':
      return { type: 'command.stop', commandId: cmd.id, ...(cmd.reason ? { reason: cmd.reason } : {}) };
    case 'approve':
      return { type: 'proposal.approve', commandId: cmd.id, id: cmd.proposal, by: cmd.by, at, ...(cmd.secretRef ? { secretRef: cmd.secretRef } : {}), ...(cmd.secretHash ? { secretHash: cmd.secretHash } : {}) };
    case 'deny':
      return { type: 'proposal.deny', commandId: cmd.id, id: cmd.proposal, by: cmd.by, at, ...(cmd.reason ? { reason: cmd.reason } : {}) };
    case 'propose':
      return { type: 'proposal.received', proposal: cmd.proposal, at };
  }
}
