# frozen_string_literal: true

# The benchmark's jobs for Ruby Sidekiq, 6.4 or 7.3 (whichever `require "sidekiq"` finds):
# the same bodies as bench/jobs.py, recording into the same Redis keys. The workers load
# it with `sidekiq -r`, and bench/ruby/driver.rb (the Ruby client's side) requires it.
#
# A job body's INCR goes through the Redis library of the Sidekiq that runs it (redis 4.8
# for 6.4, redis-client for 7.3), on one connection per thread made on the thread's first
# job: redis-py's pool in the Python workers likewise gives each busy thread a connection.
require "sidekiq"

module Bench
  URL = ENV.fetch("BENCH_REDIS_URL")
  TARGET = ENV.fetch("BENCH_TARGET", "0").to_i
  COUNTER = "bench:count"
  SLOW_STARTS = "bench:slow"
  SIDEKIQ7 = Gem::Version.new(Sidekiq::VERSION) >= Gem::Version.new("7")

  def self.connect
    SIDEKIQ7 ? RedisClient.new(url: URL) : Redis.new(url: URL)
  end

  def self.call(*command)
    (Thread.current[:bench_redis] ||= connect).call(*command)
  end

  # One INCR; the first job and the one reaching BENCH_TARGET also record the time.
  def self.noop
    n = call("INCR", COUNTER)
    call("SET", "bench:t:#{n}", Time.now.to_f.to_s) if n == 1 || n == TARGET
  end
end

# Debian pairs Sidekiq 6.4 with the redis gem 4.8, whose SADD of one member warns on stderr
# (building a backtrace line) at every enqueue; Sidekiq ignores that SADD's reply.
Redis.sadd_returns_boolean = false if !Bench::SIDEKIQ7 && Redis.respond_to?(:sadd_returns_boolean=)
Sidekiq.configure_server { |config| config.redis = {url: Bench::URL} }
Sidekiq.configure_client { |config| config.redis = {url: Bench::URL} }
Sidekiq.logger.level = Logger::WARN # every system logs at warning level

class BenchNoop
  include Sidekiq::Job

  def perform
    Bench.noop
  end
end

# Records how late it started: now minus its enqueue (or due) time.
class BenchStamp
  include Sidekiq::Job

  def perform(key, value)
    Bench.call("RPUSH", key, (Time.now.to_f - value).to_s)
  end
end

# Sleeps, then counts like BenchNoop: the long jobs, and the slow 1% of the mixed scenario.
class BenchNap
  include Sidekiq::Job

  def perform(seconds)
    sleep(seconds)
    Bench.noop
  end
end

# Records which process started it and when, then sleeps: the recovery row's job.
class BenchSlow
  include Sidekiq::Job

  def perform(token, seconds)
    Bench.call("RPUSH", Bench::SLOW_STARTS, "#{token} #{Process.pid} #{Time.now.to_f}")
    sleep(seconds)
  end
end
