#include "load_options.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <utility>

namespace portico::load {
namespace {

struct Builtin {
  const char* name;
  const char* text;  // $MBOX is replaced by the quoted mailbox name
};

// FETCHBODY needs messages: use --seed-messages.
constexpr Builtin kBuiltins[] = {
    {"NOOP", "NOOP"},
    {"CAPABILITY", "CAPABILITY"},
    {"SELECT", "SELECT $MBOX"},
    {"EXAMINE", "EXAMINE $MBOX"},
    {"STATUS", "STATUS $MBOX (MESSAGES UIDNEXT UNSEEN)"},
    {"FETCH", "FETCH 1:* (FLAGS)"},
    {"FETCHBODY", "FETCH %n BODY.PEEK[]"},
    {"FETCHHEADER", "FETCH %n BODY.PEEK[HEADER]"},
    {"LIST", "LIST \"\" \"*\""},
    {"SEARCH", "UID SEARCH ALL"},
};

std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) {
    s.remove_prefix(1);
  }
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) {
    s.remove_suffix(1);
  }
  return s;
}

std::string replaceAll(std::string text, std::string_view from, std::string_view to) {
  for (std::size_t pos = 0; (pos = text.find(from, pos)) != std::string::npos; pos += to.size()) {
    text.replace(pos, from.size(), to);
  }
  return text;
}

// Where the single %d-style conversion of a user pattern sits.
struct Conversion {
  std::size_t begin = std::string_view::npos;
  std::size_t end = 0;
  int width = 0;
  bool zero = false;
};

std::string findConversion(std::string_view pattern, Conversion& conv) {
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] != '%') {
      continue;
    }
    if (conv.begin != std::string_view::npos) {
      return "user pattern may hold only one %d conversion";
    }
    std::size_t j = i + 1;
    Conversion c;
    c.begin = i;
    if (j < pattern.size() && pattern[j] == '0') {
      c.zero = true;
      ++j;
    }
    while (j < pattern.size() && std::isdigit(static_cast<unsigned char>(pattern[j]))) {
      c.width = c.width * 10 + (pattern[j] - '0');
      if (c.width > 20) {
        return "user pattern width too large";
      }
      ++j;
    }
    if (j >= pattern.size() || pattern[j] != 'd') {
      return "user pattern: only %d, %Nd and %0Nd are supported";
    }
    c.end = j + 1;
    conv = c;
    i = j;
  }
  return {};
}

}  // namespace

std::string parseDuration(std::string_view text, std::uint64_t& ns) {
  text = trim(text);
  std::size_t num_end = 0;
  while (num_end < text.size() &&
         (std::isdigit(static_cast<unsigned char>(text[num_end])) || text[num_end] == '.')) {
    ++num_end;
  }
  if (num_end == 0) {
    return "bad duration '" + std::string(text) + "' (expected e.g. 500ms, 10s, 2m)";
  }
  std::string number(text.substr(0, num_end));
  char* end = nullptr;
  double value = std::strtod(number.c_str(), &end);
  if (end != number.c_str() + number.size() || !std::isfinite(value) || value < 0) {
    return "bad duration '" + std::string(text) + "'";
  }
  std::string_view unit = text.substr(num_end);
  double scale = 0;
  if (unit.empty() || unit == "s") {
    scale = 1e9;
  } else if (unit == "ms") {
    scale = 1e6;
  } else if (unit == "us") {
    scale = 1e3;
  } else if (unit == "m") {
    scale = 60e9;
  } else if (unit == "h") {
    scale = 3600e9;
  } else {
    return "bad duration unit in '" + std::string(text) + "' (use ms, s, m or h)";
  }
  double total = value * scale;
  if (total > 1e18) {
    return "duration '" + std::string(text) + "' too long";
  }
  ns = static_cast<std::uint64_t>(total);
  return {};
}

std::string checkUserPattern(std::string_view pattern) {
  if (pattern.empty()) {
    return "empty user pattern";
  }
  Conversion conv;
  return findConversion(pattern, conv);
}

std::string formatUser(std::string_view pattern, std::uint32_t index) {
  Conversion conv;
  if (!findConversion(pattern, conv).empty() || conv.begin == std::string_view::npos) {
    return std::string(pattern);
  }
  char digits[16];
  auto res = std::to_chars(digits, digits + sizeof(digits), index);
  std::string number(digits, res.ptr);
  if (static_cast<int>(number.size()) < conv.width) {
    number.insert(0, conv.width - number.size(), conv.zero ? '0' : ' ');
  }
  std::string out(pattern.substr(0, conv.begin));
  out += number;
  out += pattern.substr(conv.end);
  return out;
}

std::string builtinCommandHelp() {
  std::string out;
  for (const Builtin& b : kBuiltins) {
    out += "  ";
    out += b.name;
    out += " = ";
    out += b.text;
    out += '\n';
  }
  return out;
}

std::string quoteImap(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
    }
    out += c;
  }
  out += '"';
  return out;
}

std::string parseMix(std::string_view spec, const std::vector<std::string>& defines,
                     std::string_view mailbox, std::vector<MixEntry>& mix) {
  std::vector<std::pair<std::string, std::string>> known;
  for (const Builtin& b : kBuiltins) {
    known.emplace_back(b.name, replaceAll(b.text, "$MBOX", quoteImap(mailbox)));
  }
  for (const std::string& d : defines) {
    std::size_t eq = d.find('=');
    if (eq == std::string::npos || eq == 0 || trim(d.substr(eq + 1)).empty()) {
      return "bad --define '" + d + "' (expected NAME=COMMAND TEXT)";
    }
    std::string name = upper(trim(std::string_view(d).substr(0, eq)));
    std::string text(trim(std::string_view(d).substr(eq + 1)));
    if (text.find_first_of("\r\n") != std::string::npos) {
      return "--define " + name + ": command text may not contain CR or LF";
    }
    auto it = std::find_if(known.begin(), known.end(), [&](auto& k) { return k.first == name; });
    if (it != known.end()) {
      it->second = text;
    } else {
      known.emplace_back(name, text);
    }
  }
  mix.clear();
  std::string_view rest = spec;
  while (!rest.empty()) {
    std::size_t comma = rest.find(',');
    std::string_view item = trim(rest.substr(0, comma));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    if (item.empty()) {
      continue;
    }
    std::size_t colon = item.find(':');
    std::string name = upper(trim(item.substr(0, colon)));
    std::uint32_t weight = 1;
    if (colon != std::string_view::npos) {
      std::string_view w = trim(item.substr(colon + 1));
      auto res = std::from_chars(w.data(), w.data() + w.size(), weight);
      if (res.ec != std::errc() || res.ptr != w.data() + w.size() || weight > 10000) {
        return "bad weight in mix item '" + std::string(item) + "' (0..10000)";
      }
    }
    auto it = std::find_if(known.begin(), known.end(), [&](auto& k) { return k.first == name; });
    if (it == known.end()) {
      return "unknown command '" + name + "' in --mix (define it with --define " + name +
             "=TEXT); built-ins:\n" + builtinCommandHelp();
    }
    if (weight == 0) {
      continue;
    }
    for (const MixEntry& e : mix) {
      if (e.name == name) {
        return "command '" + name + "' appears twice in --mix";
      }
    }
    MixEntry entry;
    entry.name = name;
    entry.text = it->second;
    entry.weight = weight;
    std::size_t seq = entry.text.find("%n");
    if (seq != std::string::npos) {
      entry.has_seq = true;
      entry.before = entry.text.substr(0, seq);
      entry.after = entry.text.substr(seq + 2);
    } else {
      entry.before = entry.text;
    }
    mix.push_back(std::move(entry));
  }
  if (mix.empty()) {
    return "--mix selects no command";
  }
  if (mix.size() > 64) {
    return "--mix has more than 64 commands";
  }
  return {};
}

std::vector<std::uint16_t> buildSchedule(const std::vector<MixEntry>& mix) {
  std::uint64_t total = 0;
  for (const MixEntry& e : mix) {
    total += e.weight;
  }
  std::vector<std::int64_t> current(mix.size(), 0);
  std::vector<std::uint16_t> out;
  out.reserve(total);
  for (std::uint64_t n = 0; n < total; ++n) {
    std::size_t best = 0;
    for (std::size_t i = 0; i < mix.size(); ++i) {
      current[i] += mix[i].weight;
      if (current[i] > current[best]) {
        best = i;
      }
    }
    current[best] -= static_cast<std::int64_t>(total);
    out.push_back(static_cast<std::uint16_t>(best));
  }
  return out;
}

bool sessionIsActive(std::uint32_t index, std::uint32_t active_percent) {
  const std::uint64_t i = index;
  return (i + 1) * active_percent / 100 > i * active_percent / 100;
}

std::string finishOptions(Options& o) {
  if (o.sessions == 0) {
    return "--sessions must be at least 1";
  }
  if (o.threads == 0 || o.threads > 64) {
    return "--threads must be 1..64";
  }
  if (o.pipeline == 0 || o.pipeline > 1024) {
    return "--pipeline must be 1..1024";
  }
  if (o.active_percent == 0 || o.active_percent > 100) {
    return "--active-percent must be 1..100";
  }
  if (o.think_ns > 3600ull * 1'000'000'000ull) {
    return "--think-time is limited to 1h";
  }
  if (o.user_count == 0) {
    return "--user-count must be at least 1";
  }
  if (o.duration_ns == 0 && o.max_commands == 0) {
    return "give a --duration or a --max-commands";
  }
  if (o.duration_ns > 24 * 3600ull * 1'000'000'000ull) {
    return "--duration is limited to 24h";
  }
  if (o.timeout_ns < 1'000'000) {
    return "--timeout must be at least 1ms";
  }
  if (o.setup_concurrency == 0) {
    return "--setup-concurrency must be at least 1";
  }
  if (o.message_size < 64 || o.message_size > 64 * 1024 * 1024) {
    return "--message-size must be 64 bytes .. 64 MiB";
  }
  if (o.seed_messages > 100000) {
    return "--seed-messages is limited to 100000";
  }
  if (std::string e = checkUserPattern(o.users); !e.empty()) {
    return e;
  }
  if (o.password.empty()) {
    return "--password is required";
  }
  if (o.mailbox.empty() || o.mailbox.find_first_of("\r\n") != std::string::npos) {
    return "bad --mailbox";
  }
  if (std::string e = parseMix(o.mix_spec, o.defines, o.mailbox, o.mix); !e.empty()) {
    return e;
  }
  o.schedule = buildSchedule(o.mix);
  return {};
}

}  // namespace portico::load
