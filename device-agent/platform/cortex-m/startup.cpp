// Minimal Cortex-M4 start-up for the example firmware and the on-target tests: vector table,
// .data/.bss set-up, FPU enable, static constructors, then main(). A vendor SDK brings its
// own; this one exists so the core can be linked and run without any SDK.
#include <cstddef>
#include <cstdint>

#include "startup.hpp"

extern "C" {
extern std::uint32_t __data_start, __data_end, __data_load, __bss_start, __bss_end;
extern std::uint32_t __stack_top, __stack_limit;
extern void (*__init_array_start[])();
extern void (*__init_array_end[])();

int main();
[[noreturn]] void Reset_Handler();
void Default_Handler();
void HardFault_Handler() __attribute__((weak, alias("Default_Handler")));
void SysTick_Handler() __attribute__((weak, alias("Default_Handler")));

// The core's port interfaces have virtual destructors and pure virtual functions, so the
// toolchain's defaults would be linked: the deleting destructors call operator delete, which
// brings free(), malloc() and _sbrk (a heap this firmware does not have), and
// __cxa_pure_virtual brings std::terminate (about 0.5 KiB in all with newlib-nano). Objects
// here are never deleted and no pure virtual is ever called, so these only trap.
void __cxa_pure_virtual() { fw::fatal("pure virtual call"); }
// Static objects are never destroyed on a device that only stops by reset, so their
// destructors are not registered (saves __cxa_atexit and its table).
int __aeabi_atexit(void*, void (*)(void*), void*) { return 0; }
void* __dso_handle = nullptr;
}

void operator delete(void*) noexcept { fw::fatal("operator delete"); }
void operator delete(void*, std::size_t) noexcept { fw::fatal("operator delete"); }

namespace {
constexpr std::uint32_t kStackPaint = 0x5a5aa5a5u;

using Vector = void (*)();
}  // namespace

// Initial SP, then the 15 system exceptions; no device interrupts are used.
__attribute__((section(".isr_vector"), used)) const Vector g_vectors[16] = {
    reinterpret_cast<Vector>(&__stack_top),
    Reset_Handler,
    Default_Handler,    // NMI
    HardFault_Handler,
    Default_Handler,    // MemManage
    Default_Handler,    // BusFault
    Default_Handler,    // UsageFault
    nullptr, nullptr, nullptr, nullptr,
    Default_Handler,    // SVCall
    Default_Handler,    // DebugMonitor
    nullptr,
    Default_Handler,    // PendSV
    SysTick_Handler,
};

extern "C" void Default_Handler() { fw::fatal("unexpected exception"); }

extern "C" void Reset_Handler() {
  // CP10/CP11 full access: compiled with -mfloat-abi=hard, libgcc or newlib may touch the FPU.
  volatile std::uint32_t& cpacr = *reinterpret_cast<volatile std::uint32_t*>(0xE000ED88u);
  cpacr = cpacr | (0xFu << 20);
  __asm volatile("dsb\n isb" ::: "memory");

  const std::uint32_t* src = &__data_load;
  for (std::uint32_t* dst = &__data_start; dst < &__data_end;) *dst++ = *src++;
  for (std::uint32_t* dst = &__bss_start; dst < &__bss_end;) *dst++ = 0;

  // Paint the stack below the current frame so stack_used() can find the high-water mark.
  std::uint32_t* sp;
  __asm volatile("mov %0, sp" : "=r"(sp));
  for (std::uint32_t* p = &__stack_limit; p < sp - 16;) *p++ = kStackPaint;

  for (auto* ctor = __init_array_start; ctor < __init_array_end; ++ctor) (*ctor)();
  const int rc = main();
  fw::exit(rc);
}

namespace fw {

std::size_t stack_used() {
  const std::uint32_t* p = &__stack_limit;
  while (p < &__stack_top && *p == kStackPaint) ++p;
  return static_cast<std::size_t>(reinterpret_cast<const std::uint8_t*>(&__stack_top) -
                                  reinterpret_cast<const std::uint8_t*>(p));
}

void stack_repaint() {
  std::uint32_t* sp;
  __asm volatile("mov %0, sp" : "=r"(sp));
  // Stay clear of this function's own frame.
  for (std::uint32_t* p = &__stack_limit; p < sp - 16;) *p++ = kStackPaint;
}

std::size_t stack_size() {
  return static_cast<std::size_t>(reinterpret_cast<const std::uint8_t*>(&__stack_top) -
                                  reinterpret_cast<const std::uint8_t*>(&__stack_limit));
}

}  // namespace fw
