# Evaluates Ruby snippets for the interop tests, so that a test pays for loading Sidekiq and
# Active Job once. Each line of stdin is a JSON string of Ruby code; each reply is one line of
# JSON on stdout: {"value": ...} or {"error": ..., "class": ..., "backtrace": [...]}.
# Everything else the process prints (loggers included) goes to stderr.
replies = $stdout.dup
$stdout.reopen($stderr)
replies.sync = true

require_relative "app"

replies.puts(JSON.generate({"value" => "ready"}))
while (line = $stdin.gets)
  begin
    value = TOPLEVEL_BINDING.eval(JSON.parse(line))
    reply = JSON.generate({"value" => value})
  rescue Exception => e # everything, SyntaxError and NameError included, goes back to the test
    reply = JSON.generate({"error" => e.message, "class" => e.class.name, "backtrace" => e.backtrace&.first(8)})
  end
  replies.puts(reply)
end
