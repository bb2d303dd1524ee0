import { PassThrough } from 'node:stream';
import { type ContainerSpec, LABEL, type Labels } from '../../../machines/ports.js';
import { BASE_IMAGE, SUITE_ID, suiteLabels, uniqueName } from '../../support/docker.js';

/** Labels of one test run: the suite label plus a run id the adapter adopts by. */
export function runLabels(run = `run-${SUITE_ID}`): Labels {
  return { ...suiteLabels, [LABEL.run]: run, [LABEL.identity]: `id-${SUITE_ID}` };
}

export function spec(overrides: Partial<ContainerSpec> = {}): ContainerSpec {
  return {
    name: uniqueName('c'),
    image: BASE_IMAGE,
    role: 'agent',
    labels: runLabels(),
    networks: [],
    env: {},
    mounts: [],
    tty: false,
    openStdin: false,
    hardened: false,
    cmd: ['sleep', 'infinity'],
    ...overrides,
  };
}

/**
 * A TCP server on PORT for tests (Perl is in every Debian base). It answers each connection
 * with an HTTP 200 after reading the request head, so it serves both tcp and http checks.
 */
export function serverCmd(port: number, delaySec = 0): string[] {
  const perl = [
    '$| = 1;',
    'my $s = IO::Socket::INET->new(LocalAddr => "0.0.0.0", LocalPort => $ARGV[0], Listen => 16, ReuseAddr => 1) or die "listen: $!";',
    'print "listening on $ARGV[0]\\n";',
    'while (my $c = $s->accept) { while (my $l = <$c>) { last if $l =~ /^\\r?\\n$/ } print $c "HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok"; close $c }',
  ].join(' ');
  return ['bash', '-c', `sleep ${delaySec}; exec perl -MIO::Socket::INET -e '${perl}' ${port}`];
}

/** Collects everything written to it. */
export function collector(): PassThrough & { text(): string } {
  const chunks: Buffer[] = [];
  const stream = new PassThrough() as PassThrough & { text(): string };
  stream.on('data', (chunk: Buffer) => chunks.push(chunk));
  stream.text = () => Buffer.concat(chunks).toString('utf8');
  return stream;
}
