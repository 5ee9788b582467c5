# Sidekiq 7.3's own readers of its execution metrics, on the tests' Redis (REDIS_URL): run with the
# vendored Sidekiq 7.3 on RUBYLIB (../shared/vendor/ruby), never Debian's 6.4, which has none.
# For the classes named as arguments, prints one line of JSON on stdout: "top", what
# Sidekiq::Metrics::Query#top_jobs totals per class over the last 10 minutes; "histograms", each
# class's histogram from #for_job added up over those minutes, in bucket order; and "pages", the
# HTML of the Web UI's /metrics and /metrics/CLASS pages, rendered through Rack.
replies = $stdout.dup
$stdout.reopen($stderr)

require "json"
require "securerandom"
require "sidekiq"
require "sidekiq/metrics/query"
require "sidekiq/web"
require "rack/mock"
require "rack/session/cookie"

classes = ARGV
query = Sidekiq::Metrics::Query.new
out = {"top" => query.top_jobs(minutes: 10).job_results.transform_values(&:totals), "histograms" => {},
       "pages" => {}}
web = Rack::MockRequest.new(Rack::Session::Cookie.new(Sidekiq::Web.new, secret: SecureRandom.hex(64)))
classes.each do |klass|
  minutes = query.for_job(klass, minutes: 10).job_results[klass].hist.values
  out["histograms"][klass] = minutes.transpose.map(&:sum).reverse # for_job lists the slowest bucket first
  out["pages"]["/metrics/#{klass}"] = web.get("/metrics/#{klass}").body
end
out["pages"]["/metrics"] = web.get("/metrics").body
replies.puts(JSON.generate(out))
