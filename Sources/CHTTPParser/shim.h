// Node's http-parser (Debian: libhttp-parser-dev), the HTTP/1.x parser of `selm serve`'s HTTP
// endpoints (Sources/Server/HTTPParser.swift). Debian ships no pkg-config file for it.
#include <http_parser.h>
