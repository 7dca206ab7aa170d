// Services of startup.cpp for the example firmware and the on-target tests.
#pragma once

#include <cstddef>

namespace fw {

// Text to the debugger's console and exit, over Arm semihosting (qemu-system-arm
// -semihosting, OpenOCD `arm semihosting enable`). Without a debugger attached a
// semihosting call faults, so production firmware replaces these with a log and a reset.
void print(const char* text);
[[noreturn]] void exit(int code);
[[noreturn]] void fatal(const char* what);

// Bytes of the main stack used so far (high-water mark of the painted stack) and its size.
std::size_t stack_used();
std::size_t stack_size();
// Repaints the free stack below the caller; stack_used() afterwards is the deepest point
// reached since, which measures the calls made in between.
void stack_repaint();

}  // namespace fw
