#pragma once
// Reading launcher and user settings from the environment, with errors that
// name the variable and its value.
#include <string>

namespace emix {

// Value of environment variable `name`; "" when unset or empty (launchers
// sometimes export a variable empty, which means the same as unset).
std::string env_string(const char* name);

// Non-negative integer value of `name`; -1 when unset or empty, an Error
// naming the variable and value when set but not a non-negative integer.
int env_int(const char* name);

}  // namespace emix
