import type { AddressRefusal } from '../../config/address-policy.js';
import { type AddressPolicy, systemResolve, vetHost } from '../common/address-policy.js';
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
  /** For an address refusal: the class (`private (RFC 1918)`, `loopback`, `docker host`, ...), audited as `address_class`. */
  addressClass?: string;
}

export type Vet = (target: Target) => Promise<Vetted | Refused>;

/** dns.lookup(all), which reads /etc/hosts as the container's resolver does. */
export const defaultResolve = systemResolve;

/** A test's stand-in for the address policy: a reason (or a whole refusal) when an address must not be dialled. */
export type IsForbidden = (address: string) => string | AddressRefusal | undefined;

/** The address policy, or a test's stand-in for it, as the one shape vetHost takes. */
export function policyOf(isForbidden: IsForbidden): AddressPolicy {
  return {
    deny: [],
    allow: [],
    check: (address) => {
      const why = isForbidden(address);
      if (why === undefined || typeof why !== 'string') return why;
      return { ok: false, address, addressClass: why, kind: 'always', what: `a ${why} address` };
    },
  };
}

/**
 * Resolves a target once (an IP literal is its own answer) and refuses it when any of its
 * addresses is refused by the shared address policy (sidecars/common/address-policy.ts). The
 * caller connects only to the addresses returned, never resolving again, so there is no
 * window for DNS rebinding between this check and the connection.
 */
export function createVet(resolve: (host: string) => Promise<string[]>, policy: AddressPolicy, bottle?: string): Vet {
  return async (target) => {
    const v = await vetHost(target.host, policy, resolve, 'the egress proxy', bottle);
    if (v.ok) return v;
    if (v.refusal === undefined) return { ok: false, status: 502, reason: v.reason, forbidden: false };
    return { ok: false, status: 403, reason: v.reason, forbidden: true, addressClass: v.refusal.addressClass };
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
