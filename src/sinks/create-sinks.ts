import { ConfigError } from '../config/errors.ts';
import type { Route } from '../config/routes.ts';
import type { Logger } from '../kernel/log.ts';
import { HttpSink } from './http-sink.ts';
import { LogSink } from './log-sink.ts';
import { NatsSink } from './nats-sink.ts';
import { NoopSink } from './noop-sink.ts';
import { RabbitMqSink } from './rabbitmq-sink.ts';
import type { Sink } from './types.ts';

/** One sink instance per route, keyed by the route's sink name. */
export function createSinks(routes: readonly Route[], log: Logger, env: NodeJS.ProcessEnv = process.env): Map<string, Sink> {
  const sinks = new Map<string, Sink>();
  routes.forEach((route, i) => {
    const cfg = route.sink;
    switch (cfg.type) {
      case 'http': {
        let secret: string | undefined;
        if (cfg.hmacSecretEnv) {
          secret = env[cfg.hmacSecretEnv];
          if (!secret) {
            throw new ConfigError(cfg.hmacSecretEnv, `is empty or unset, but routes[${i}].sink.hmacSecretEnv names it as the HMAC secret`);
          }
        }
        sinks.set(route.sinkName, new HttpSink(route.sinkName, cfg, secret));
        break;
      }
      case 'log':
        sinks.set(route.sinkName, new LogSink(route.sinkName, log, cfg.level));
        break;
      case 'noop':
        sinks.set(route.sinkName, new NoopSink(route.sinkName));
        break;
      case 'nats':
        sinks.set(route.sinkName, new NatsSink(route.sinkName, cfg));
        break;
      case 'rabbitmq':
        sinks.set(route.sinkName, new RabbitMqSink(route.sinkName, cfg));
        break;
    }
  });
  return sinks;
}
