#include "command_names.hpp"

#include <CLI/CLI.hpp>
#include <algorithm>

namespace otactl {

namespace {

std::vector<std::string> names_of(const CLI::App& app) {
  std::vector<std::string> out;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    out.push_back(sub->get_name());
  return out;
}

// "otactl" or "otactl rollout" (the command path, for messages).
std::string path_of(const CLI::App& app) {
  std::string path = app.get_name();
  for (const CLI::App* p = app.get_parent(); p; p = p->get_parent())
    path = p->get_name() + " " + path;
  return path;
}

// An option of `app` or of a command above it (global options fall through).
const CLI::Option* option_of(const CLI::App& app, const std::string& word) {
  for (const CLI::App* a = &app; a; a = a->get_parent())
    if (const CLI::Option* o = a->get_option_no_throw(word)) return o;
  return nullptr;
}

std::string list_of(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

std::string unknown_text(const CLI::App& at, const std::string& word) {
  const auto names = names_of(at);
  const auto best = closest(word, names);
  const std::string what = at.get_parent() ? at.get_name() + " command" : "command";
  return "unknown " + what + " '" + word + "'" + (best ? " (did you mean '" + *best + "'?)" : "") +
         "; the " + what + "s are: " + list_of(names) + " (" + path_of(at) + " --help)";
}

}  // namespace

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::optional<std::string> closest(const std::string& word,
                                   const std::vector<std::string>& candidates) {
  std::optional<std::string> best;
  std::size_t best_d = 0;
  for (const auto& c : candidates) {
    const std::size_t d = c.rfind(word, 0) == 0 ? 1 : edit_distance(word, c);
    if (!best || d < best_d) best = c, best_d = d;
  }
  // More than a third of the word changed (at least 2 edits allowed) is not a typo.
  if (best && best_d > std::max<std::size_t>(2, word.size() / 3)) return std::nullopt;
  return best;
}

std::optional<std::string> command_error(const CLI::App& app, int argc, const char* const* argv) {
  const CLI::App* at = &app;
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    if (word == "--") break;
    if (word == "-h" || word == "--help" || word == "--version") return std::nullopt;
    if (word.size() > 1 && word[0] == '-') {
      const CLI::Option* o = word.find('=') == std::string::npos ? option_of(*at, word) : nullptr;
      if (o && o->get_items_expected_max() > 0) ++i;  // its value
      continue;
    }
    const auto names = names_of(*at);
    if (names.empty()) return std::nullopt;  // a leaf command's arguments
    if (std::find(names.begin(), names.end(), word) == names.end()) return unknown_text(*at, word);
    at = at->get_subcommand_ptr(word).get();
  }
  if (at->get_require_subcommand_min() > 0) {
    return path_of(*at) + ": a subcommand is required: " + list_of(names_of(*at)) + " (" +
           path_of(*at) + " --help)";
  }
  return std::nullopt;
}

}  // namespace otactl
