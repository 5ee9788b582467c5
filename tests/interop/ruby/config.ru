# Sidekiq's Web UI on the tests' Redis. Sidekiq 6.4 needs a session (for its CSRF token).
require "securerandom"
require "rack/session/cookie"
require "sidekiq/web"
require_relative "app"

use Rack::Session::Cookie, secret: SecureRandom.hex(64), same_site: true, max_age: 86_400
run Sidekiq::Web
