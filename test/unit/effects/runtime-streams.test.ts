import { describe, expect, it } from 'vitest';
import { dockerTime, withoutRecorded } from '../../../effects/docker/runtime-streams.js';

const b = (s: string) => Buffer.from(s);

describe('filling in output logged while no CLI was attached', () => {
  it('cuts the lines the log already ends with', () => {
    expect(withoutRecorded(b('a\nb\nc\n'), b('b\nc\nd\ne\n')).toString()).toBe('d\ne\n');
    expect(withoutRecorded(b('a\nb\nc\n'), b('a\nb\nc\nd\n')).toString()).toBe('d\n');
  });

  it('keeps everything when nothing overlaps', () => {
    expect(withoutRecorded(b('a\nb\n'), b('x\ny\n')).toString()).toBe('x\ny\n');
    expect(withoutRecorded(b(''), b('x\n')).toString()).toBe('x\n');
  });

  it('cuts only whole lines, and the longest overlap', () => {
    expect(withoutRecorded(b('tick\n'), b('tick\ntick\nnew\n')).toString()).toBe('tick\nnew\n');
    expect(withoutRecorded(b('tick\ntick\n'), b('tick\ntick\nnew\n')).toString()).toBe('new\n');
    expect(withoutRecorded(b('ab\n'), b('b\nc\n')).toString()).toBe('b\nc\n');
  });

  it('writes Docker timestamps as seconds.nanoseconds', () => {
    expect(dockerTime(1_795_767_553_440_123_456n)).toBe('1795767553.440123456');
    expect(dockerTime(5n)).toBe('0.000000005');
  });
});
