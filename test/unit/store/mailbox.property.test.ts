import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MailboxCommandSchema } from '../../../machines/commands.js';
import { pendingCommands, postCommand, quarantineCommand } from '../../../store/mailbox.js';
import { runs } from '../../support/property.js';
import { useTempDir } from './tmp.js';

/**
 * Mailbox command files (store/mailbox.ts read with the engine's one command type,
 * machines/commands.ts): whatever lands in runs/<runId>/commands/, pendingCommands never throws,
 * hands on exactly the files that are commands, reports every other one with a reason, and
 * quarantining keeps the file's bytes (the owner's drain, engine/host.ts, does exactly this).
 */

const tmp = useTempDir();
let n = 0;
const freshDir = () => {
  const dir = join(tmp(), `mb-${++n}`, 'commands');
  mkdirSync(dir, { recursive: true });
  return dir;
};

const id = fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/);
const time = fc.integer({ min: 0, max: 999_999_999_999_999 }).map((t) => String(t).padStart(15, '0'));
const text = fc.string({ unit: 'grapheme', maxLength: 30 });

/** Commands the owner takes. */
const command = fc.oneof(
  fc.record({ id, type: fc.constant('stop'), reason: fc.string({ maxLength: 200 }) }, { requiredKeys: ['id', 'type'] }),
  fc.record({ id, type: fc.constant('approve'), proposal: id, by: fc.string({ minLength: 1, maxLength: 200 }) }),
  fc.record({ id, type: fc.constant('deny'), proposal: id, by: fc.string({ minLength: 1, maxLength: 200 }), reason: fc.string({ maxLength: 2000 }) }, { requiredKeys: ['id', 'type', 'proposal', 'by'] }),
  fc.record({
    id,
    type: fc.constant('propose'),
    proposal: fc.record({ id, kind: fc.constantFrom('dockerfile', 'allowlist', 'route'), reason: fc.string({ minLength: 1, maxLength: 50 }), change: fc.dictionary(text, fc.jsonValue({ maxDepth: 2 })) }),
  }),
);

/** Near misses and garbage: a stray key, a wrong type, a missing field, not JSON at all. */
const notCommand = fc.oneof(
  command.map((c) => ({ ...c, extra: 1 })),
  command.map((c) => ({ ...c, type: `${c.type}!` })),
  fc.record({ id, type: fc.constantFrom('approve', 'deny') }),
  fc.record({ id: fc.string(), type: text }),
  fc.jsonValue({ maxDepth: 3 }),
);

type Entry =
  | { kind: 'command'; name: string; content: string; command: object }
  | { kind: 'bad'; name: string; content: string | Buffer }
  | { kind: 'dir'; name: string }
  | { kind: 'temp'; name: string; content: string };

const entry: fc.Arbitrary<Entry> = fc.oneof(
  fc.tuple(time, command).map(([t, c]): Entry => ({ kind: 'command', name: `${t}-${c.id}.json`, content: `${JSON.stringify(c)}\n`, command: c })),
  // A good name holding something that is not a command (or not JSON, or not UTF-8).
  fc
    .tuple(time, id, fc.oneof(notCommand.map((v) => JSON.stringify(v) ?? ''), fc.string(), fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b))))
    .filter(([, i, c]) => {
      const parsed = typeof c === 'string' ? safeJson(c) : undefined;
      return !(MailboxCommandSchema.safeParse(parsed).success && (parsed as { id: string }).id === i);
    })
    .map(([t, i, c]): Entry => ({ kind: 'bad', name: `${t}-${i}.json`, content: c })),
  // A command under another command's name.
  fc.tuple(time, id, command).filter(([, i, c]) => i !== c.id).map(([t, i, c]): Entry => ({ kind: 'bad', name: `${t}-${i}.json`, content: JSON.stringify(c) })),
  // Not a command file name at all.
  fc
    .string({ minLength: 1, maxLength: 40 })
    .filter((s) => !s.includes('/') && !s.includes('\0') && s !== '.' && s !== '..' && !s.startsWith('.') && !s.endsWith('.malformed') && !/^\d{15}-[A-Za-z0-9_-]{1,64}\.json$/.test(s))
    .map((name): Entry => ({ kind: 'bad', name, content: '{}' })),
  // A folder where a command file should be (a stray mkdir, a tool's leftovers).
  fc.tuple(time, id).map(([t, i]): Entry => ({ kind: 'dir', name: `${t}-${i}.json` })),
  // Someone's post in progress.
  fc.tuple(time, id).map(([t, i]): Entry => ({ kind: 'temp', name: `.${t}-${i}.json.tmp`, content: '{"id":' })),
);

function safeJson(t: string): unknown {
  try {
    return JSON.parse(t);
  } catch {
    return undefined;
  }
}

/** Unique names: one entry per name (a folder and a file cannot share one). */
const mailbox = fc.uniqueArray(entry, { selector: (e) => e.name, maxLength: 10 });

describe('mailbox: arbitrary command files', () => {
  it('never throws; commands are handed on in name order, every other entry is reported, temp files are left alone', () => {
    fc.assert(
      fc.property(mailbox, (entries) => {
        const dir = freshDir();
        for (const e of entries) {
          if (e.kind === 'dir') mkdirSync(join(dir, e.name));
          else writeFileSync(join(dir, e.name), e.content);
        }
        const pending = pendingCommands(dir, MailboxCommandSchema);
        const good = entries.filter((e) => e.kind === 'command').sort((a, b) => (a.name < b.name ? -1 : 1));
        expect(pending.commands).toEqual(good.map((e) => (e.kind === 'command' ? e.command : null)));
        const reported = pending.malformed.map((m) => m.name).sort();
        expect(reported).toEqual(entries.filter((e) => e.kind === 'bad' || e.kind === 'dir').map((e) => e.name).sort());
        for (const m of pending.malformed) expect(m.reason).not.toBe('');
      }),
      runs(200),
    );
  });

  it('quarantine keeps every reported entry as it was, under .malformed, and it is not reported again', () => {
    fc.assert(
      fc.property(mailbox, (entries) => {
        const dir = freshDir();
        for (const e of entries) {
          if (e.kind === 'dir') mkdirSync(join(dir, e.name));
          else writeFileSync(join(dir, e.name), e.content);
        }
        const first = pendingCommands(dir, MailboxCommandSchema);
        for (const bad of first.malformed) {
          const to = quarantineCommand(dir, bad.name);
          const e = entries.find((x) => x.name === bad.name)!;
          if (e.kind === 'bad') expect(readFileSync(to)).toEqual(Buffer.from(e.content));
          else expect(existsSync(to)).toBe(true);
        }
        const again = pendingCommands(dir, MailboxCommandSchema);
        expect(again.malformed).toEqual([]);
        expect(again.commands).toEqual(first.commands);
        // Nothing was removed: every entry is still there, quarantined or not.
        expect(readdirSync(dir).length).toBe(entries.length);
      }),
      runs(150),
    );
  });

  it('the same bad name arriving again after a quarantine: every quarantined entry is kept, nothing throws', () => {
    const name = fc.constantFrom('000000000000001-a.json', '000000000000002-b.json', 'junk');
    const round = fc.array(fc.tuple(name, fc.oneof(fc.string({ maxLength: 10 }), fc.constant(null))), { minLength: 1, maxLength: 3 });
    fc.assert(
      fc.property(fc.array(round, { minLength: 1, maxLength: 4 }), (rounds) => {
        const dir = freshDir();
        const quarantined: (string | null)[] = [];
        for (const entries of rounds) {
          for (const [n, content] of entries) {
            if (existsSync(join(dir, n))) continue; // one entry per name at a time
            // null: a folder (with something in it) where the file should be.
            if (content === null) {
              mkdirSync(join(dir, n));
              writeFileSync(join(dir, n, 'inside'), 'x');
            } else writeFileSync(join(dir, n), `not a command ${content}`);
            quarantined.push(content);
          }
          for (const bad of pendingCommands(dir, MailboxCommandSchema).malformed) quarantineCommand(dir, bad.name);
        }
        const kept = readdirSync(dir).filter((f) => f.endsWith('.malformed'));
        expect(kept.length).toBe(quarantined.length);
        const files = kept.filter((f) => !statSync(join(dir, f)).isDirectory()).map((f) => readFileSync(join(dir, f), 'utf8'));
        expect(files.sort()).toEqual(quarantined.filter((c) => c !== null).map((c) => `not a command ${c}`).sort());
      }),
      runs(150),
    );
  });

  it('a FIFO under a command name is reported, not read (reading it would block the owner)', () => {
    const dir = freshDir();
    const name = '000000000000001-fifo.json';
    execFileSync('mkfifo', [join(dir, name)]);
    postCommand(dir, { id: 's1', type: 'stop' }, { now: 2 });
    const pending = pendingCommands(dir, MailboxCommandSchema);
    expect(pending.malformed).toEqual([{ name, reason: 'not a regular file' }]);
    expect(pending.commands).toEqual([{ id: 's1', type: 'stop' }]);
  });

  it('what postCommand writes reads back as the same command', () => {
    fc.assert(
      fc.property(fc.uniqueArray(command, { selector: (c) => c.id, maxLength: 6 }), (commands) => {
        const dir = freshDir();
        for (const [i, c] of commands.entries()) postCommand(dir, c as never, { now: 1_000 + i });
        const pending = pendingCommands(dir, MailboxCommandSchema);
        expect(pending.malformed).toEqual([]);
        expect(pending.commands).toEqual(commands);
      }),
      runs(40),
    );
  });
});
