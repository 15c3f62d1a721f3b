# Builds every layering probe (BUILD_DIR, PROBES = "target=header;...") and passes only if each
# one failed because its header was not found: a probe that compiles, or fails for another
# reason, means a room can see what it must not (or the probe is broken).
set(failures "")
foreach(probe IN LISTS PROBES)
  string(REPLACE "=" ";" parts "${probe}")
  list(GET parts 0 target)
  list(GET parts 1 header)
  execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${target}
                  RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
  if(result EQUAL 0)
    list(APPEND failures "${target}: compiled, so its room can include ${header}")
  elseif(NOT output MATCHES "${header}: No such file or directory")
    list(APPEND failures "${target}: failed, but not for want of ${header}:\n${output}")
  else()
    message(STATUS "${target}: refused, as it should be (${header} not found)")
  endif()
endforeach()
if(failures)
  string(JOIN "\n" text ${failures})
  message(FATAL_ERROR "wrong-way includes:\n${text}")
endif()
