// otactl's command names on the command line: an unknown or missing subcommand named with the
// closest known one, before CLI11 parses (it would only say "A subcommand is required").
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace otactl {

// Levenshtein distance (insert, delete, substitute: 1 each).
std::size_t edit_distance(const std::string& a, const std::string& b);
// The candidate closest to `word` if it is close enough to be a typo (or `word` starts it).
std::optional<std::string> closest(const std::string& word,
                                   const std::vector<std::string>& candidates);

// Walks argv down the subcommands: the message for the first word that is not a command where
// one is expected ("unknown command 'imag' (did you mean 'image'?) ..."), or for a command
// that needs one of its own and got none; nullopt when the commands are right (or --help).
std::optional<std::string> command_error(const CLI::App& app, int argc, const char* const* argv);

}  // namespace otactl
