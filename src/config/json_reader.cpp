#include "config/json_reader.hpp"

#include <algorithm>

#include "core/text.hpp"

namespace emix {

JsonObjectReader::JsonObjectReader(const Json& object, std::string where)
    : object_(object), where_(std::move(where)) {
  if (!object_.is_object() && !object_.is_null()) {
    fail("config key '{}': expected an object, got {}", where_.empty() ? "<top level>" : where_, object_.dump());
  }
}

const Json* JsonObjectReader::lookup(std::string_view key) {
  known_keys_.emplace_back(key);
  if (!object_.is_object()) return nullptr;
  auto it = object_.find(std::string(key));
  return it == object_.end() ? nullptr : &*it;
}

JsonObjectReader JsonObjectReader::object(std::string_view key) {
  static const Json empty = Json::object();
  const Json* value = lookup(key);
  return JsonObjectReader(value == nullptr || value->is_null() ? empty : *value, path(key));
}

void JsonObjectReader::wrong_type(std::string_view key, const Json& value, std::string_view expected) const {
  std::string shown = value.dump();
  if (shown.size() > 60) shown = shown.substr(0, 57) + "...";
  fail("config key '{}': expected {}, got {}", path(key), expected, shown);
}

void JsonObjectReader::reject_unknown_keys() const {
  if (!object_.is_object()) return;
  for (const auto& [key, value] : object_.items()) {
    if (std::find(known_keys_.begin(), known_keys_.end(), key) != known_keys_.end()) continue;
    std::string suggestion = closest_match(key, known_keys_);
    if (!suggestion.empty()) fail("unknown config key '{}' (did you mean '{}'?)", path(key), path(suggestion));
    std::string valid;
    for (const auto& k : known_keys_) valid += (valid.empty() ? "" : ", ") + k;
    fail("unknown config key '{}' (valid keys here: {})", path(key), valid);
  }
}

Json parse_json_text(std::string_view text, std::string_view source) {
  try {
    return Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/true, /*ignore_comments=*/true);
  } catch (const Json::parse_error& e) {
    // Turn the byte offset into line:column, which is what an editor shows.
    size_t offset = std::min<size_t>(e.byte == 0 ? 0 : e.byte - 1, text.size());
    size_t line = 1 + static_cast<size_t>(std::count(text.begin(), text.begin() + static_cast<long>(offset), '\n'));
    size_t line_start = text.rfind('\n', offset == 0 ? 0 : offset - 1);
    size_t column = offset - (line_start == std::string_view::npos ? 0 : line_start + 1) + 1;
    std::string what = e.what();
    auto pos = what.find("syntax error");
    fail("{}:{}:{}: invalid JSON: {}", source, line, column, pos == std::string::npos ? what : what.substr(pos));
  } catch (const Json::out_of_range& e) {
    // A number too large for a double (1e999): the parser gives no position.
    fail("{}: invalid JSON: {}", source, e.what());
  }
}

}  // namespace emix
