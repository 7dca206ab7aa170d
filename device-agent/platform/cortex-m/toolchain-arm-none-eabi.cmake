# CMake toolchain for a generic Cortex-M4F with Debian's gcc-arm-none-eabi and newlib-nano.
# Used by device-agent/platform/cortex-m/build.sh; usable by a firmware project as is.
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)

set(CMAKE_C_COMPILER arm-none-eabi-gcc)
set(CMAKE_CXX_COMPILER arm-none-eabi-g++)
set(CMAKE_ASM_COMPILER arm-none-eabi-gcc)
set(CMAKE_OBJCOPY arm-none-eabi-objcopy CACHE FILEPATH "")
set(CMAKE_SIZE arm-none-eabi-size CACHE FILEPATH "")
# The compiler checks would try to link a hosted program, which bare metal cannot.
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)

# Hard float: most Cortex-M4 parts ship the FPU (M4F); the core itself uses no floating point,
# so soft-float firmware links the same objects once rebuilt with -mfloat-abi=soft.
set(OTA_MCU_FLAGS "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16")
# Section per function/object so --gc-sections drops what the firmware never calls
# (e.g. the controller-side encoders of the codec).
set(CMAKE_C_FLAGS_INIT "${OTA_MCU_FLAGS} -ffunction-sections -fdata-sections")
set(CMAKE_CXX_FLAGS_INIT
    "${OTA_MCU_FLAGS} -ffunction-sections -fdata-sections -fno-exceptions -fno-rtti -fno-threadsafe-statics")
set(CMAKE_ASM_FLAGS_INIT "${OTA_MCU_FLAGS}")
set(CMAKE_EXE_LINKER_FLAGS_INIT "${OTA_MCU_FLAGS} --specs=nano.specs --specs=nosys.specs -Wl,--gc-sections")

set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
