"""Lua shared by kiq's scripts."""

# is_a(key, kind): whether ``key`` holds a ``kind`` ('list', 'zset', 'hash'...) or nothing. A
# script that takes a job out of one key and puts it into another checks the second first:
# Redis does not undo a script's earlier writes when a later command fails, so a job popped for
# a queue key that anything with access to Redis made a hash (say) would be lost. Such a job
# stays where it was instead.
IS_A = """
local function is_a(key, kind)
  local found = redis.call('TYPE', key)['ok']
  return found == kind or found == 'none'
end
"""
