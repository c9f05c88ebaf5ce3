# Shared flags for the in-tree C programs (c-examples, c-tests): strict warnings, and the
# sanitizers when P99_SANITIZE is ON.
option(P99_SANITIZE "Build with AddressSanitizer and UndefinedBehaviorSanitizer" OFF)
set(CMAKE_C_STANDARD 11)
set(CMAKE_C_STANDARD_REQUIRED ON)
set(CMAKE_C_EXTENSIONS ON)
add_compile_options(-Wall -Wextra -Werror)
if(P99_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
  add_compile_definitions(P99_SANITIZE=1)
endif()
