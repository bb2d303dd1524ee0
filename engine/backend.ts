import type { CapabilityApplier, ContainerRuntime, ImageProvider } from '../machines/ports.js';
import type { EngineContext } from './context.js';

/** One implementation of the ports that touch containers: Docker, or the tests' fake. */
export interface Backend {
  kind: 'docker' | 'fake';
  runtime: ContainerRuntime;
  images: ImageProvider;
  capabilities: CapabilityApplier;
  /** Content tags of the built-in agent and sidecar images. */
  imageTags(): Promise<{ agent: string; sidecar: string }>;
}

/** Docker, unless BOTTLE_BACKEND=fake asks for the tests' file-backed fake (engine/test-hooks). */
export async function openBackend(ctx: EngineContext): Promise<Backend> {
  if (ctx.env.BOTTLE_BACKEND === 'fake') {
    const { fakeBackend } = await import('./test-hooks/fake-backend.js');
    return fakeBackend(ctx);
  }
  const { dockerBackend } = await import('./docker-backend.js');
  return dockerBackend(ctx);
}
