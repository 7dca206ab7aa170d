// fw::print / fw::exit over Arm semihosting (see startup.hpp).
#include <cstdint>

#include "startup.hpp"

namespace {

constexpr int kSysWrite0 = 0x04;
constexpr int kSysExit = 0x18;
// On 32-bit Arm SYS_EXIT takes the reason itself: ApplicationExit ends qemu with status 0,
// any other reason with status 1.
constexpr std::uintptr_t kAdpApplicationExit = 0x20026;
constexpr std::uintptr_t kAdpRunTimeErrorUnknown = 0x20023;

int semihost(int op, const void* arg) {
  register int r0 __asm("r0") = op;
  register const void* r1 __asm("r1") = arg;
  __asm volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

}  // namespace

namespace fw {

void print(const char* text) { semihost(kSysWrite0, text); }

void exit(int code) {
  const std::uintptr_t reason = code == 0 ? kAdpApplicationExit : kAdpRunTimeErrorUnknown;
  semihost(kSysExit, reinterpret_cast<const void*>(reason));
  for (;;) {
  }
}

void fatal(const char* what) {
  print("fatal: ");
  print(what);
  print("\n");
  exit(1);
}

}  // namespace fw
