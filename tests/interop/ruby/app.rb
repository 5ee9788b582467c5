# The Ruby side of kiq's interoperability tests, loaded by every Ruby process they start:
# `sidekiq -r app.rb`, the snippet evaluator (repl.rb) and the Web UI (web.rb).
# Redis comes from REDIS_URL, which the tests point at their private redis-server.
# Jobs record what they see in Redis lists named "ruby:*", as JSON.
# The same file serves Debian's Sidekiq 6.4 and the vendored Sidekiq 7.3 (RUBYLIB names it, see
# tests/interop/conftest.py); SIDEKIQ_EXPECTED says which one the test meant to load.
require "json"
require "bigdecimal"
require "logger"
require "sidekiq"
if ENV["SIDEKIQ_EXPECTED"] && !Sidekiq::VERSION.start_with?(ENV["SIDEKIQ_EXPECTED"])
  abort "app.rb: loaded Sidekiq #{Sidekiq::VERSION}, expected #{ENV["SIDEKIQ_EXPECTED"]}"
end
if Sidekiq::VERSION >= "7"
  # Sidekiq 7.3 brings its own Active Job adapter, which RUBYLIB puts ahead of Active Job 6.1's;
  # its wrapper class lives in sidekiq/rails, which a Rails app loads at boot (railties 6.1 here).
  require "rails"
  require "sidekiq/rails"
end
require "sidekiq/api"
require "active_job"
require "globalid"

GlobalID.app = "kiq-interop"
Time.zone_default = Time.find_zone!("UTC") # what a Rails app's default config.time_zone sets
ActiveJob::Base.queue_adapter = :sidekiq
ActiveJob::Base.logger = Logger.new($stderr, level: Logger::WARN)

Sidekiq.configure_server do |config|
  # Poll the schedule and retry sets every 0.1 to 0.3 s, from the start, instead of every
  # 2.5 to 7.5 s after an initial 10 to 15 s: the tests check that jobs run on time.
  (config.respond_to?(:options) ? config.options : config)[:poll_interval_average] = 0.2
  Sidekiq::Scheduled::Poller.prepend(Module.new do
    private

    def initial_wait
    end
  end)
end

module Interop
  def self.record(list, value)
    Sidekiq.redis { |conn| conn.rpush(list, JSON.generate(value)) }
  end

  # A running job as Sidekiq::Workers yields it (a Hash in 6.4, a Sidekiq::Work in 7), as a Hash
  # with the payload parsed.
  def self.work(work)
    hash = work.is_a?(Hash) ? work : {"queue" => work.queue, "run_at" => work.run_at.to_i, "payload" => work.payload}
    payload = hash["payload"]
    hash.merge("payload" => payload.is_a?(String) ? JSON.parse(payload) : payload)
  end

  # A value as JSON can show it, with its Ruby class where JSON would lose it.
  # (Module#to_s, because ActiveSupport 6.1 makes TimeWithZone.name say "Time".)
  def self.shown(value)
    case value
    when ActiveSupport::Duration
      {"class" => value.class.to_s, "seconds" => value.to_f, "iso8601" => value.iso8601}
    when DateTime, Time, ActiveSupport::TimeWithZone
      {"class" => value.class.to_s, "iso8601" => value.iso8601(6)}
    when Date then {"class" => "Date", "iso8601" => value.iso8601}
    when BigDecimal then {"class" => "BigDecimal", "value" => value.to_s("F")}
    when Symbol then {"class" => "Symbol", "value" => value.to_s}
    when Array then value.map { |item| shown(item) }
    when Hash then value.to_h { |key, item| [key.to_s, shown(item)] }
    else value
    end
  end
end

# Records its arguments exactly as Sidekiq handed them over.
class EchoJob
  include Sidekiq::Worker
  sidekiq_options queue: "ruby"

  def perform(*args)
    Interop.record("ruby:echo", {"jid" => jid, "args" => args, "ran_at" => Time.now.to_f})
  end
end

# Fails every time; Sidekiq files it in the retry set.
class RubyFailJob
  include Sidekiq::Worker
  sidekiq_options queue: "ruby", retry: 5

  def perform(token)
    Interop.record("ruby:attempts", token)
    raise ArgumentError, "ruby failed #{token}"
  end
end

# Fails with no retries left; Sidekiq files it in the dead set.
class RubyDeadJob
  include Sidekiq::Worker
  sidekiq_options queue: "ruby", retry: 0

  def perform(token)
    raise "ruby died #{token}"
  end
end

# Runs until the test pushes to ruby:release:TOKEN (or 60 s pass). It polls: Sidekiq 7's
# redis-client gives up on a reply after 3 s, so a long BLPOP would fail the job there.
class RubyGateJob
  include Sidekiq::Worker
  sidekiq_options queue: "ruby"

  def perform(token)
    Interop.record("ruby:started", token)
    deadline = Time.now + 60
    sleep 0.05 until Sidekiq.redis { |conn| conn.lpop("ruby:release:#{token}") } || Time.now > deadline
  end
end

# A model that Global ID can locate: records live in the Redis hash interop:accounts (id -> name).
class Account
  include GlobalID::Identification

  attr_reader :id, :name

  def self.find(id)
    name = Sidekiq.redis { |conn| conn.hget("interop:accounts", id.to_s) }
    raise ArgumentError, "no Account with id #{id}" unless name
    new(id.to_s, name)
  end

  def initialize(id, name)
    @id = id
    @name = name
  end
end

# An Active Job whose Python namesake is tests/interop/jobs.py's AccountJob.
class AccountJob < ActiveJob::Base
  queue_as :ruby

  def perform(account, note, **options)
    Interop.record("ruby:accounts", {
      "job_id" => job_id,
      "provider_job_id" => provider_job_id,
      "queue_name" => queue_name,
      "executions" => executions,
      "account" => {"class" => account.class.name, "id" => account.id, "name" => account.name},
      "note" => note,
      "options" => Interop.shown(options)
    })
  end
end
