import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RunHost } from '../../../engine/host.js';
import { replayFile } from '../../../engine/replay.js';
import { EventLog } from '../../../store/event-log.js';
import { postCommand } from '../../../store/mailbox.js';
import { commandsDir, eventsFile } from '../../../store/paths.js';
import { fakeContext, fakeHostDeps, testInput, testManifest, until } from '../../support/engine.js';
import { runs } from '../../support/property.js';

/**
 * A running owner's mailbox (engine/host.ts drainMailbox) fed arbitrary entries next to real
 * commands: the owner keeps running, carries out every command once, quarantines and reports
 * every other entry, keeps its bytes, and none of it reaches the log.
 */

const id = fc.stringMatching(/^[a-z0-9]{1,12}$/);
type Bad = { kind: 'file'; content: string | Uint8Array } | { kind: 'folder' } | { kind: 'fifo' } | { kind: 'name'; content: string };
const bad: fc.Arbitrary<Bad> = fc.oneof(
  fc.oneof(fc.string({ maxLength: 40 }), fc.uint8Array({ maxLength: 40 }), fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v) ?? '')).map((content): Bad => ({ kind: 'file', content })),
  fc.constantFrom<Bad>({ kind: 'folder' }, { kind: 'fifo' }),
  fc.string({ maxLength: 30 }).map((content): Bad => ({ kind: 'name', content })),
);

describe('a running owner fed arbitrary mailbox entries', () => {
  it('carries out the commands, quarantines everything else with its bytes, and its log replays', async () => {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.uniqueArray(id, { minLength: 1, maxLength: 3 }), fc.array(bad, { minLength: 1, maxLength: 4 }), async (proposals, bads) => {
        const ctx = fakeContext();
        const input = testInput(ctx, testManifest({ agentCommand: ['fake-agent', '--ms', 'forever'], supervise: true }), `rprop${++n}`);
        const states: string[] = [];
        const reports: string[] = [];
        const host = RunHost.start({ ...(await fakeHostDeps(ctx, { onState: (s) => states.push(s) })), report: (line) => reports.push(line) }, input);
        const dir = commandsDir(ctx.home, input.identity, input.runId);
        const file = eventsFile(ctx.home, input.identity, input.runId);
        await until(() => states.includes('running'), 'running');

        // The bad entries first (under names that sort before the commands), then the commands.
        const kept = new Map<string, Buffer | null>();
        bads.forEach((b, i) => {
          const name = b.kind === 'name' ? `x${i}-not a command` : `000000000000000-bad${i}.json`;
          const path = join(dir, name);
          if (b.kind === 'folder') mkdirSync(path);
          else if (b.kind === 'fifo') execFileSync('mkfifo', [path]);
          else writeFileSync(path, b.content);
          kept.set(name, b.kind === 'file' || b.kind === 'name' ? readFileSync(path) : null);
        });
        for (const p of proposals) {
          postCommand(dir, { id: `c${p}`, type: 'propose', proposal: { id: `prop-${p}`, kind: 'allowlist', reason: 'need it', change: { hosts: [`${p}.test`] } } });
        }
        await until(() => reports.length === bads.length, 'every bad entry reported');
        await until(() => EventLog.read(file).filter((r) => r.kind === 'command').length === proposals.length, 'every command recorded');

        for (const [name, bytes] of kept) {
          expect(readdirSync(dir)).toContain(`${name}.malformed`);
          if (bytes) expect(readFileSync(join(dir, `${name}.malformed`))).toEqual(bytes);
        }
        postCommand(dir, { id: 'stop', type: 'stop' });
        expect((await host.done).state).toBe('done');
        const records = EventLog.read(file);
        const commandIds = records.flatMap((r) => (r.kind === 'command' ? [r.id] : []));
        expect(commandIds.sort()).toEqual([...proposals.map((p) => `c${p}`), 'stop'].sort());
        expect(replayFile(file).problem).toBeNull();
      }),
      runs(25),
    );
  });
});
