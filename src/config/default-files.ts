// Where each daemon looks for its config file when --config names none (docs/operations.md,
// "Config files"). Apart from the readers, which load the TOML parser, so `--help` does not.
export const DEFAULT_SERVER_CONFIG = '/etc/ibnbd/server.toml';
export const DEFAULT_CLIENT_CONFIG = '/etc/ibnbd/client.toml';
