import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import type { Route } from './routes.js';

/**
 * The routes in force and the keep-alive upstream agent serving each, swapped as one value on
 * a reload; and the agents of routes a reload removed, closed once no request uses them.
 */

const DEFAULT_SYSTEM_CA = '/etc/ssl/certs/ca-certificates.crt';

/** A keep-alive agent per route; https agents trust the system CAs plus the route's bundle. */
export function upstreamAgent(route: Route, systemCaFile: string = DEFAULT_SYSTEM_CA, keepAliveMs = 4000): http.Agent {
  // Free sockets are dropped after a few seconds: an upstream closing an idle connection just
  // as a request is written on it would fail that request.
  const common = { keepAlive: true, timeout: keepAliveMs };
  if (route.upstream.protocol === 'http:') return new http.Agent(common);
  const ca: string[] = [...tls.rootCertificates];
  try {
    ca.push(readFileSync(systemCaFile, 'utf8'));
  } catch {
    // No system bundle: Node's bundled roots alone.
  }
  if (route.caFile !== undefined) {
    const extra = readFileSync(route.caFile, 'utf8'); // unreadable: the caller fails closed
    if (!extra.includes('-----BEGIN CERTIFICATE-----')) throw new Error(`${route.caFile} holds no PEM certificate`);
    ca.push(extra);
  }
  // One secure context per route, built once: parsing a few hundred roots per connection would cost milliseconds.
  return new https.Agent({ ...common, secureContext: tls.createSecureContext({ ca }) });
}

/** What a route's upstream agent depends on: a route that keeps these keeps its agent (and its warm connections) across a reload. */
const agentKey = (r: Route) => JSON.stringify([r.path, r.upstream.origin, r.caFile ?? null]);

/** The routes in force and what serves them, swapped as one value. */
export interface RouteTable {
  routes: readonly Route[];
  agents: Map<Route, http.Agent>;
  byKey: Map<string, http.Agent>;
  paths: string[];
}

export interface AgentOptions {
  systemCaFile?: string;
  keepAliveMs?: number;
}

/** Builds the table for `routes`, reusing the agents of `previous` where the route is unchanged; throws before anything changes. */
export function buildTable(routes: readonly Route[], agentOptions: AgentOptions, previous?: RouteTable): RouteTable {
  const agents = new Map<Route, http.Agent>();
  const byKey = new Map<string, http.Agent>();
  const built: http.Agent[] = [];
  try {
    for (const r of routes) {
      const key = agentKey(r);
      let agent = byKey.get(key) ?? previous?.byKey.get(key);
      if (agent === undefined) {
        agent = upstreamAgent(r, agentOptions.systemCaFile, agentOptions.keepAliveMs);
        built.push(agent);
      }
      agents.set(r, agent);
      byKey.set(key, agent);
    }
  } catch (err) {
    for (const a of built) a.destroy();
    throw err;
  }
  return { routes: [...routes], agents, byKey, paths: routes.map((r) => r.path) };
}

/** Agents of routes removed by a reload: each closed once no request uses it any more (checked every second). */
export class RetiredAgents {
  readonly #agents = new Set<http.Agent>();
  #reaper: NodeJS.Timeout | undefined;

  /** Retires the agents of `from` that `to` does not keep. */
  retire(from: RouteTable, to: RouteTable): void {
    const kept = new Set(to.byKey.values());
    for (const a of from.byKey.values()) if (!kept.has(a)) this.#agents.add(a);
    if (this.#agents.size > 0 && this.#reaper === undefined) {
      this.#reaper = setInterval(() => this.#reap(), 1000);
      this.#reaper.unref();
    }
  }

  /** Closes every retired agent now, in use or not. */
  closeAll(): void {
    for (const a of this.#agents) a.destroy();
    this.#agents.clear();
    if (this.#reaper !== undefined) clearInterval(this.#reaper);
    this.#reaper = undefined;
  }

  #reap(): void {
    for (const a of this.#agents) {
      const busy = Object.values(a.sockets).some((l) => (l?.length ?? 0) > 0) || Object.values(a.requests).some((l) => (l?.length ?? 0) > 0);
      if (busy) continue;
      a.destroy();
      this.#agents.delete(a);
    }
    if (this.#agents.size === 0 && this.#reaper !== undefined) {
      clearInterval(this.#reaper);
      this.#reaper = undefined;
    }
  }
}
