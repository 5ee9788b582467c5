# Serves config.ru with WEBrick on a free loopback port and prints {"port": N} on stdout once
# it listens. The tests stop it by pid.
require "json"
require "rack"
require "webrick"

app, = Rack::Builder.parse_file(File.join(__dir__, "config.ru"))
Rack::Handler::WEBrick.run(app, Host: "127.0.0.1", Port: 0, AccessLog: [],
  Logger: WEBrick::Log.new($stderr, WEBrick::Log::WARN)) do |server|
  $stdout.puts(JSON.generate({"port" => server.listeners.first.addr[1]}))
  $stdout.flush
end
