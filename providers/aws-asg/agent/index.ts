/**
 * The host agent of the AWS provider: what `vscode-swarm agent` runs on each EC2 host, and the wire
 * contract the provider's client speaks to it.
 */
export { HostAgent, runAgent, HOST_ID_PATTERN, type AgentOptions, type AgentDeps } from './host-agent.js';
export { runAgentCommand, parseAgentArgs, AGENT_USAGE } from './agent-cli.js';
export { PortPool, parsePortRange, portFreeOn, type PortRange } from './port-pool.js';
export * from './agent-protocol.js';
