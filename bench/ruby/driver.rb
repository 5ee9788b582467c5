# frozen_string_literal: true

# bench/driver.py's commands for Ruby Sidekiq, through Sidekiq's own client:
#   ruby bench/ruby/driver.rb COMMAND [options]
# The orchestrator sets BENCH_REDIS_URL, BENCH_SIDEKIQ (the `sidekiq` executable to start the
# workers with) and RUBYLIB (for 7.3). Each command prints one JSON object on its last line.
require "json"
require "optparse"
require_relative "jobs"

BULK_CHUNK = 1000
CHUNK = 100

def nap?(index, every)
  every.positive? && ((index + 1) % every).zero?
end

def info(opts)
  jobs = File.expand_path("jobs.rb", __dir__)
  command = ["ruby", ENV.fetch("BENCH_SIDEKIQ"), "-r", jobs, "-c", opts[:threads].to_s, "-q", "default",
    "-t", "5", "-e", "production"]
  {commands: [command] * opts[:processes], depth: 0, bulk: true, delay: true,
   shape: "#{opts[:processes]} procs x #{opts[:threads]} threads", version: Sidekiq::VERSION}
end

def enqueue_noop(count, bulk)
  if bulk
    Sidekiq::Client.push_bulk("class" => BenchNoop, "args" => Array.new(count) { [] })
  else
    count.times { BenchNoop.perform_async }
  end
end

def enqueue(opts)
  began = Time.now.to_f
  started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  sent = 0
  every = opts[:nap_every]
  while sent < opts[:n]
    break if opts[:within].positive? && Process.clock_gettime(Process::CLOCK_MONOTONIC) - started > opts[:within]
    if nap?(sent, every)
      BenchNap.perform_async(opts[:nap_seconds])
      sent += 1
      next
    end
    step = [opts[:bulk] ? BULK_CHUNK : CHUNK, opts[:n] - sent].min
    step = [step, every - 1 - sent % every].min if every.positive?
    enqueue_noop(step, opts[:bulk])
    sent += step
  end
  {seconds: Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, jobs: sent, began: began}
end

def stamps(opts)
  first = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  opts[:n].times do |index|
    pause = first + index * opts[:gap] - Process.clock_gettime(Process::CLOCK_MONOTONIC)
    sleep(pause) if pause.positive?
    if nap?(index, opts[:nap_every])
      BenchNap.perform_async(opts[:nap_seconds])
    elsif opts[:delay].positive?
      due = Time.now.to_f + opts[:delay]
      BenchStamp.perform_at(due, opts[:key], due)
    else
      BenchStamp.perform_async(opts[:key], Time.now.to_f)
    end
  end
  {}
end

command = ARGV.shift
opts = {bulk: false, within: 0.0, gap: 0.02, delay: 0.0, nap_every: 0, nap_seconds: 0.0}
OptionParser.new do |parser|
  parser.on("--processes P", Integer) { |v| opts[:processes] = v }
  parser.on("--threads T", Integer) { |v| opts[:threads] = v }
  parser.on("--redis-url URL") { |v| opts[:redis_url] = v }
  parser.on("--n N", Integer) { |v| opts[:n] = v }
  parser.on("--bulk") { opts[:bulk] = true }
  parser.on("--within S", Float) { |v| opts[:within] = v }
  parser.on("--key K") { |v| opts[:key] = v }
  parser.on("--gap S", Float) { |v| opts[:gap] = v }
  parser.on("--delay S", Float) { |v| opts[:delay] = v }
  parser.on("--nap-every K", Integer) { |v| opts[:nap_every] = v }
  parser.on("--nap-seconds S", Float) { |v| opts[:nap_seconds] = v }
  parser.on("--token T") { |v| opts[:token] = v }
  parser.on("--seconds S", Float) { |v| opts[:seconds] = v }
end.parse!(ARGV)

result =
  case command
  when "info" then info(opts)
  when "enqueue" then enqueue(opts)
  when "stamps" then stamps(opts)
  when "slow"
    BenchSlow.perform_async(opts[:token], opts[:seconds])
    {}
  else abort("unknown command #{command.inspect}")
  end
puts JSON.generate(result)
$stdout.flush
