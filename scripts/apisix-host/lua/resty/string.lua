-- graylane's APISIX test host: Debian has no lua-resty-string, and
-- lua-resty-http (which resty.proxy-wasm uses for dispatch_http_call) only
-- takes `to_hex` from it, to print a TLS client certificate's digest.
-- This is that one function; nothing else of resty.string is provided.
local byte = string.byte
local format = string.format

local _M = {}

function _M.to_hex(s)
    return (s:gsub(".", function(c)
        return format("%02x", byte(c))
    end))
end

return _M
