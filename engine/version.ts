/** The versions a user may ask about: the package's, and the machine's that its logs record. */
export { MACHINE_VERSION } from '../machines/bottle.machine.js';
export { ENGINE_VERSION } from '../machines/specs.js';
