// The status endpoint's request parser (llhttp under byte-count limits),
// the reason phrases and JSON error bodies.
#include "status_server.h"

#include "http_util.h"
#include "portico/json_text.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <exception>
#include <memory>
#include <unordered_set>

namespace portico::health {

using namespace http_detail;  // NOLINT: this library's own helpers

const char* httpReasonPhrase(int status) {
  struct Phrase {
    int status;
    const char* text;
  };
  static constexpr Phrase kPhrases[] = {
      {100, "Continue"},
      {200, "OK"},
      {201, "Created"},
      {202, "Accepted"},
      {204, "No Content"},
      {301, "Moved Permanently"},
      {302, "Found"},
      {304, "Not Modified"},
      {400, "Bad Request"},
      {401, "Unauthorized"},
      {403, "Forbidden"},
      {404, "Not Found"},
      {405, "Method Not Allowed"},
      {408, "Request Timeout"},
      {409, "Conflict"},
      {413, "Content Too Large"},
      {414, "URI Too Long"},
      {415, "Unsupported Media Type"},
      {422, "Unprocessable Content"},
      {429, "Too Many Requests"},
      {431, "Request Header Fields Too Large"},
      {500, "Internal Server Error"},
      {501, "Not Implemented"},
      {502, "Bad Gateway"},
      {503, "Service Unavailable"},
      {504, "Gateway Timeout"},
      {505, "HTTP Version Not Supported"},
  };
  for (const Phrase& phrase : kPhrases) {
    if (phrase.status == status) {
      return phrase.text;
    }
  }
  return "Unknown";
}

std::string jsonError(int status, std::string_view message) {
  // The message can hold request bytes (a percent-decoded target, say):
  // jsonText escapes control characters and replaces invalid UTF-8.
  return "{\"error\":{\"status\":" + std::to_string(status) +
         ",\"message\":" + jsonText(nlohmann::json(std::string(message))) + "}}";
}

const char* httpParseEventTypeName(HttpParseEventType type) {
  switch (type) {
    case HttpParseEventType::kNeedMore:
      return "need_more";
    case HttpParseEventType::kContinue:
      return "continue";
    case HttpParseEventType::kRequest:
      return "request";
    case HttpParseEventType::kError:
      return "error";
  }
  return "?";
}

// ---------------------------------------------------------------------------
// HttpRequestParser.

std::size_t HttpRequestParser::Scanner::scan(std::string_view bytes,
                                             const StatusServerLimits& limits) {
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    const char c = bytes[i];
    if (phase == Phase::kRequestLine) {
      if (line_bytes >= limits.max_request_line) {
        return i;
      }
      ++line_bytes;
      if (c == '\n') {
        // llhttp skips empty lines before a request; they still count here so
        // that a stream of CRLFs meets a limit.
        if (current_line > 0) {
          phase = Phase::kHeaders;
          current_line = 0;
        }
      } else if (c != '\r') {
        ++current_line;
        if (c == ' ' && spaces < 0xff) {
          ++spaces;
        }
      }
    } else if (phase == Phase::kHeaders) {
      if (header_bytes >= limits.max_header_bytes) {
        return i;
      }
      ++header_bytes;
      if (c == '\n') {
        if (current_line == 0) {
          phase = Phase::kBody;
          return bytes.size();  // the body has its own limit, checked by count
        }
        current_line = 0;
      } else if (c != '\r') {
        ++current_line;
      }
    } else {
      return bytes.size();
    }
  }
  return bytes.size();
}

const llhttp_settings_t& HttpRequestParser::settings() {
  static const llhttp_settings_t kSettings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_message_begin = &HttpRequestParser::onMessageBegin;
    s.on_url = &HttpRequestParser::onUrl;
    s.on_header_field = &HttpRequestParser::onHeaderField;
    s.on_header_field_complete = &HttpRequestParser::onHeaderFieldComplete;
    s.on_header_value = &HttpRequestParser::onHeaderValue;
    s.on_header_value_complete = &HttpRequestParser::onHeaderValueComplete;
    s.on_headers_complete = &HttpRequestParser::onHeadersComplete;
    s.on_body = &HttpRequestParser::onBody;
    s.on_message_complete = &HttpRequestParser::onMessageComplete;
    return s;
  }();
  return kSettings;
}

HttpRequestParser::HttpRequestParser(const StatusServerLimits& limits) : limits_(limits) {
  llhttp_init(&parser_, HTTP_REQUEST, &settings());
  parser_.data = this;
}

namespace {
HttpRequestParser* owner(llhttp_t* parser) {
  return static_cast<HttpRequestParser*>(parser->data);
}
}  // namespace

int HttpRequestParser::fail(int status, std::string message) {
  error_status_ = status;
  error_message_ = std::move(message);
  return HPE_USER;  // any non-zero value stops llhttp; feed() reads error_status_
}

void HttpRequestParser::startMessage() {
  in_headers_ = true;
  in_message_ = true;
  header_count_ = 0;
  url_.clear();
  field_.clear();
  value_.clear();
  request_ = HttpRequest{};
}

int HttpRequestParser::onMessageBegin(llhttp_t* parser) {
  owner(parser)->startMessage();
  return 0;
}

// The data callbacks below only append: the scanner has already bounded the
// request line and the header section, so nothing here can grow unbounded,
// and no error depends on where llhttp happened to cut a span. The hard
// bound is a second line of defence that only a scanner bug could reach
// (the fuzz target would see it as a split-dependent result).
bool HttpRequestParser::beyondHardBound(const std::string& so_far, std::size_t more) const {
  return so_far.size() + more > limits_.max_request_line + limits_.max_header_bytes;
}

int HttpRequestParser::onUrl(llhttp_t* parser, const char* at, std::size_t length) {
  HttpRequestParser* self = owner(parser);
  if (self->beyondHardBound(self->url_, length)) {
    return self->fail(431, "request head too large");
  }
  self->url_.append(at, length);
  return 0;
}

int HttpRequestParser::onHeaderField(llhttp_t* parser, const char* at, std::size_t length) {
  HttpRequestParser* self = owner(parser);
  if (self->in_headers_) {
    if (self->beyondHardBound(self->field_, length)) {
      return self->fail(431, "request head too large");
    }
    self->field_.append(at, length);
  }
  return 0;
}

int HttpRequestParser::onHeaderFieldComplete(llhttp_t* parser) {
  HttpRequestParser* self = owner(parser);
  if (++self->header_count_ > self->limits_.max_headers) {
    return self->fail(431, "too many header fields");
  }
  return 0;
}

int HttpRequestParser::onHeaderValue(llhttp_t* parser, const char* at, std::size_t length) {
  HttpRequestParser* self = owner(parser);
  if (self->in_headers_) {
    if (self->beyondHardBound(self->value_, length)) {
      return self->fail(431, "request head too large");
    }
    self->value_.append(at, length);
  }
  return 0;
}

int HttpRequestParser::onHeaderValueComplete(llhttp_t* parser) {
  HttpRequestParser* self = owner(parser);
  if (!self->in_headers_) {
    return 0;  // chunked trailers count against max_headers but are not kept
  }
  std::string name = std::move(self->field_);
  std::transform(name.begin(), name.end(), name.begin(), asciiLower);
  const std::string_view value = trimWhitespace(self->value_);
  auto [it, inserted] = self->request_.headers.try_emplace(std::move(name), value);
  if (!inserted) {
    it->second.append(", ").append(value);
  }
  self->field_.clear();
  self->value_.clear();
  return 0;
}

int HttpRequestParser::onHeadersComplete(llhttp_t* parser) {
  HttpRequestParser* self = owner(parser);
  self->in_headers_ = false;
  if (parser->http_major != 1) {
    return self->fail(505, "HTTP version not supported");
  }
  HttpRequest& request = self->request_;
  request.method = llhttp_method_name(static_cast<llhttp_method_t>(parser->method));
  const std::size_t question = self->url_.find('?');
  if (question == std::string::npos) {
    request.path = std::move(self->url_);
  } else {
    request.path = self->url_.substr(0, question);
    request.query = self->url_.substr(question + 1);
  }
  self->url_.clear();
  const bool chunked = (parser->flags & F_CHUNKED) != 0;
  const bool has_length = (parser->flags & F_CONTENT_LENGTH) != 0;
  if (has_length && parser->content_length > self->limits_.max_body) {
    return self->fail(413, "request body too large");
  }
  // Tell the client to send the body only when the request is well formed
  // and within limits, and only once it is this request's turn (the server
  // feeds a connection's bytes one request at a time).
  const auto expect = request.headers.find("expect");
  if (expect != request.headers.end() && equalsIgnoreCase(expect->second, "100-continue") &&
      parser->http_minor >= 1 && (chunked || (has_length && parser->content_length > 0))) {
    self->paused_for_ = HttpParseEventType::kContinue;
    return HPE_PAUSED;
  }
  return 0;
}

int HttpRequestParser::onBody(llhttp_t* parser, const char* at, std::size_t length) {
  HttpRequestParser* self = owner(parser);
  // Only chunked bodies can get here over the limit (Content-Length is
  // checked up front). The offset where this trips may depend on the split,
  // but the outcome does not: the bytes up to the end of this chunk's data
  // cannot hold a syntax error.
  if (length > self->limits_.max_body - self->request_.body.size()) {
    return self->fail(413, "request body too large");
  }
  self->request_.body.append(at, length);
  return 0;
}

int HttpRequestParser::onMessageComplete(llhttp_t* parser) {
  HttpRequestParser* self = owner(parser);
  // An upgrade (or CONNECT) is answered like any request, then the
  // connection ends: the bytes after it are not HTTP/1.1 requests.
  self->keep_alive_ = llhttp_should_keep_alive(parser) != 0 && parser->upgrade == 0;
  self->paused_for_ = HttpParseEventType::kRequest;
  return HPE_PAUSED;
}

HttpFeedResult HttpRequestParser::failWith(std::size_t consumed, int status, std::string message) {
  failed_ = true;
  error_event_ = HttpParseEvent{};
  error_event_.type = HttpParseEventType::kError;
  error_event_.status = status;
  error_event_.message = std::move(message);
  return HttpFeedResult{consumed, error_event_};
}

HttpFeedResult HttpRequestParser::feed(std::string_view bytes) {
  if (failed_) {
    return HttpFeedResult{0, error_event_};
  }
  if (closed_) {
    return HttpFeedResult{bytes.size(), {}};
  }
  // llhttp gets only the bytes before the first one over a limit, so a
  // limit and a syntax error are told apart by stream offset alone.
  Scanner probe = scanner_;
  const std::size_t limit_at = probe.scan(bytes, limits_);
  const std::string_view allowed = bytes.substr(0, limit_at);
  paused_for_ = HttpParseEventType::kNeedMore;
  llhttp_errno_t err = HPE_OK;
  std::size_t consumed = allowed.size();
  if (!allowed.empty()) {
    err = llhttp_execute(&parser_, allowed.data(), allowed.size());
    if (err != HPE_OK) {
      const char* pos = llhttp_get_error_pos(&parser_);
      consumed = pos != nullptr && pos >= allowed.data()
                     ? std::min<std::size_t>(static_cast<std::size_t>(pos - allowed.data()),
                                             allowed.size())
                     : 0;
    }
  }
  scanner_.scan(bytes.substr(0, consumed), limits_);
  if (error_status_ != 0) {
    return failWith(consumed, error_status_, std::move(error_message_));
  }
  switch (err) {
    case HPE_OK:
      if (limit_at < bytes.size()) {
        if (probe.phase == Phase::kRequestLine) {
          return probe.spaces == 1 ? failWith(consumed, 414, "request URI too long")
                                   : failWith(consumed, 431, "request line too long");
        }
        return failWith(consumed, 431, "request header section too large");
      }
      return HttpFeedResult{consumed, {}};
    case HPE_PAUSED: {
      llhttp_resume(&parser_);
      HttpFeedResult result;
      result.consumed = consumed;
      if (paused_for_ == HttpParseEventType::kContinue) {
        result.event.type = HttpParseEventType::kContinue;
        return result;
      }
      result.event.type = HttpParseEventType::kRequest;
      result.event.request = std::move(request_);
      result.event.keep_alive = keep_alive_;
      request_ = HttpRequest{};
      scanner_ = Scanner{};
      in_message_ = false;
      closed_ = !keep_alive_;
      return result;
    }
    case HPE_PAUSED_H2_UPGRADE:
      return failWith(consumed, 505, "HTTP/2 is not supported");
    default: {
      const char* reason = llhttp_get_error_reason(&parser_);
      return failWith(consumed, 400,
                      std::string("malformed request: ") + (reason != nullptr ? reason : "?"));
    }
  }
}

}  // namespace portico::health
