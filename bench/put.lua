-- wrk script: PUT a new instance on every request (unique ids per connection and count).
local counter = 0
local prefix = ""

function setup(thread)
  thread:set("prefix", tostring(math.random(1, 1e9)))
end

function request()
  counter = counter + 1
  local id = "w" .. prefix .. "-" .. counter
  local body = '{"service":"bench","address":"10.0.0.1","port":8080,"tags":["prod"]}'
  return wrk.format("PUT", "/api/v1/instances/" .. id,
                    {["Content-Type"] = "application/json"}, body)
end
