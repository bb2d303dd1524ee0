import { promises as dnsPromises } from 'node:dns';
import net from 'node:net';
import type { AuditRecord } from './audit.js';
import { type Decision, formatTarget, suggestedEntry, type Target } from './policy.js';
import type { Detection } from './secrets.js';

/**
 * What the egress proxy decides about a request beyond the allowlist (policy.ts): whether the
 * addresses a target resolves to may be dialled, and the words of each refusal. A refusal
 * names the host:port and the manifest key that would allow it, and never quotes a credential.
 */

/** The addresses a target may be dialled at: every one of them checked for this request. */
export interface Vetted {
  ok: true;
  addresses: string[];
}

export interface Refused {
  ok: false;
  status: number;
  reason: string;
  /** A refusal by address policy (403) rather than a failure to resolve (502). */
  forbidden: boolean;
}

export type Vet = (target: Target) => Promise<Vetted | Refused>;

/** dns.lookup(all), which reads /etc/hosts as the container's resolver does. */
export async function defaultResolve(host: string): Promise<string[]> {
  const found = await dnsPromises.lookup(host, { all: true, verbatim: true });
  return found.map((a) => a.address);
}

/**
 * Resolves a target (an IP literal is its own answer) and refuses it when any of its addresses
 * is forbidden: a name with one bad address among good ones would reach the bad one whenever
 * the good ones fail. The caller connects only to the addresses returned, never resolving
 * again, so there is no window for DNS rebinding between this check and the connection.
 */
export function createVet(resolve: (host: string) => Promise<string[]>, isForbidden: (address: string) => string | undefined): Vet {
  return async (target) => {
    let addresses: string[];
    if (net.isIP(target.host)) {
      addresses = [target.host];
    } else {
      try {
        addresses = await resolve(target.host);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
        return { ok: false, status: 502, reason: `could not resolve ${target.host} (${code})`, forbidden: false };
      }
      if (addresses.length === 0) return { ok: false, status: 502, reason: `${target.host} has no address`, forbidden: false };
    }
    for (const address of addresses) {
      const why = isForbidden(address);
      if (why !== undefined) {
        const what = address === target.host ? address : `${target.host} resolves to ${address}`;
        return { ok: false, status: 403, reason: `${what}, a ${why} address, which the egress proxy never connects to`, forbidden: true };
      }
    }
    return { ok: true, addresses };
  };
}

/** The text of an allowlist refusal, with the entry that would allow the target. */
export function deniedText(bottle: string, method: string, target: Target, decision: Decision): string {
  return (
    `egress: refused ${method} ${formatTarget(target)}: ${decision.reason}.\n` +
    `To allow it, add "${suggestedEntry(target)}" to bottles.${bottle}.egress.allow in the manifest.\n`
  );
}

export interface CredentialFinding {
  extra: Partial<AuditRecord>;
  reason: string;
  log: string;
  text: string;
}

/** The audit fields, reason and refusal text for a credential seen in a request. */
export function credentialFound(d: Detection, where: string, method: string, target: string): CredentialFinding {
  const what = d.alarm === 'canary' ? "the bottle's placeholder token" : 'a real API token';
  return {
    extra: { alarm: d.alarm, ...(d.fingerprint !== undefined ? { token_fp: d.fingerprint } : {}) } satisfies Partial<AuditRecord>,
    reason: `credential found in ${where} (${d.alarm === 'canary' ? 'the placeholder token' : 'a real token'}); request blocked`,
    log: `egress: ALARM (${d.alarm}): a credential was found in ${where} of ${method} ${target}; the request was blocked`,
    text:
      `egress: refused ${method} ${target}: a credential (${what}) was found in ${where} and was blocked; it was not sent.\n` +
      'Credentials reach their APIs only through the cred-proxy, which adds them itself.\n',
  };
}
