// argolua: runs an Argo CD resource health check (a Lua script) the way Argo CD does,
// in gopher-lua (the interpreter Argo CD embeds) with the object as the global "obj",
// for each object given on stdin as JSON; prints the returned {"status", "message"}.
// Like Argo CD, only the base, table, string and math libraries are open.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	lua "github.com/yuin/gopher-lua"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: argolua SCRIPT.lua < objects.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "argolua:", err)
		os.Exit(2)
	}
	decoder := json.NewDecoder(os.Stdin)
	encoder := json.NewEncoder(os.Stdout)
	for {
		var object interface{}
		if err := decoder.Decode(&object); err == io.EOF {
			return
		} else if err != nil {
			fmt.Fprintln(os.Stderr, "argolua: not JSON:", err)
			os.Exit(2)
		}
		health, err := run(string(script), object)
		if err != nil {
			fmt.Fprintln(os.Stderr, "argolua:", err)
			os.Exit(1)
		}
		if err := encoder.Encode(health); err != nil {
			os.Exit(1)
		}
	}
}

func run(script string, object interface{}) (map[string]string, error) {
	state := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer state.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}, {lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath}} {
		state.Push(state.NewFunction(lib.open))
		state.Push(lua.LString(lib.name))
		state.Call(1, 0)
	}
	state.SetGlobal("obj", toLua(state, object))
	if err := state.DoString(script); err != nil {
		return nil, err
	}
	returned, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		return nil, fmt.Errorf("the script returned %s, not a table", state.Get(-1).Type())
	}
	health := map[string]string{}
	returned.ForEach(func(key, value lua.LValue) { health[key.String()] = value.String() })
	return health, nil
}

// toLua converts decoded JSON as Argo CD does: objects and arrays become tables (arrays 1-based).
func toLua(state *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case map[string]interface{}:
		table := state.NewTable()
		for key, item := range v {
			table.RawSetString(key, toLua(state, item))
		}
		return table
	case []interface{}:
		table := state.NewTable()
		for i, item := range v {
			table.RawSetInt(i+1, toLua(state, item))
		}
		return table
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case bool:
		return lua.LBool(v)
	default:
		return lua.LNil
	}
}
