"""
    CrossODE

Julia side of crossode's Julia backend. It builds an `ODEProblem` from generated source text, solves it with an
OrdinaryDiffEq algorithm, and differentiates a scalar loss of the saved trajectory with `Zygote.pullback` and an
explicit SciMLSensitivity `sensealg`. Python calls it through juliacall (`crossode/backends/julia/_backend.py`
loads this file with `include`); Julia can use it directly (`julia/test/runtests.jl`).

Workflow:

1. `cell = build(; src, iip, u0, p, t0, t1, saveat, alg, sensealg, ...)` evaluates `src` (one Julia expression that
   evaluates to `(oop = f, iip = f!)`, written by `crossode/backends/julia/_field.py`) with `include_string` in a
   fresh anonymous module, wraps the chosen form in a call counter and stores problem, algorithm, sensealg and
   solve keywords in a `Cell`.
2. `gradient_cell(cell)` returns a `NamedTuple` with `status`, `retcode`, `loss`, `du0`, `dp`, solver statistics,
   RHS call counts and timings; `solve_cell(cell)` the forward solution `ys` as an `(n_state, n_save)` matrix
   (Julia's layout: Python transposes it).

World age: the generated function is defined at run time, so `gradient_cell`/`solve_cell` enter through
`Base.invokelatest`; they work whether they are called in the same top-level expression as `build` or later.

Semantics kept identical to the other crossode backends:

- loss on the saved states `Y = Array(sol)` (`(n_state, n_save)`): `"sum_squares"` is `sum(abs2, Y) / 2`,
  `"linear"` is `sum(W .* Y)` with `W` of the same shape (Python passes the transpose of its `(n_save, n_state)`
  weights);
- fixed steps: `dt`, `adaptive = false` and `tstops` = crossode's `fixed_grid`, so every step ends on the grid;
- status: `status_of(sol.retcode)`; a forward solve that fails returns its status and no gradient.

Counting: the vector field is wrapped in `Counted`, whose `calls` counter is bumped (outside of AD via
`ChainRulesCore.ignore_derivatives`) on every call, whatever the element type (Float64, Dual, tracked). The
backward count is `calls during the whole gradient - calls during the forward pullback`. A compiled
`ReverseDiffVJP(true)` tape replays without calling Julia code, so it under-counts.

GPU (`device = "cuda"`): `u0`, `p` and the loss weights become `CUDA.CuArray`s; CUDA.jl is an optional package
loaded on demand (`Base.require`), not a dependency of this project.
"""
module CrossODE

using SciMLBase: SciMLBase, ODEProblem, ReturnCode, solve
using OrdinaryDiffEqTsit5: Tsit5
using OrdinaryDiffEqLowOrderRK: BS3, DP5, Euler, Heun, Midpoint, RK4
using OrdinaryDiffEqHighOrderRK: DP8
using OrdinaryDiffEqSDIRK: ImplicitEuler, Kvaerno5
using SciMLSensitivity: BacksolveAdjoint, EnzymeVJP, ForwardDiffSensitivity, GaussAdjoint,
    InterpolatingAdjoint, QuadratureAdjoint, ReverseDiffAdjoint, ReverseDiffVJP, ZygoteVJP
using ChainRulesCore: ignore_derivatives
import Zygote

export Cell, Counted, build, save_indices, gradient_cell, solve_cell, status_of, make_alg, make_sensealg, make_vjp,
    load_rhs, versions, warmup

const CUDA_PKGID = Base.PkgId(Base.UUID("052768ef-5323-5732-b1bb-66c8b64840ba"), "CUDA")

# ------------------------------------------------------------------------------------------ algorithms

"""
    make_alg(name)

The OrdinaryDiffEq algorithm for a crossode solver name (`crossode/backends/julia/_marshal.py::SOLVER_ALGS`).
"""
function make_alg(name::AbstractString)
    name == "Euler" && return Euler()
    name == "Midpoint" && return Midpoint()
    name == "Heun" && return Heun()
    name == "RK4" && return RK4()
    name == "BS3" && return BS3()
    name == "DP5" && return DP5()
    name == "Tsit5" && return Tsit5()
    name == "DP8" && return DP8()
    name == "ImplicitEuler" && return ImplicitEuler()
    name == "Kvaerno5" && return Kvaerno5()
    throw(ArgumentError("unknown solver $(repr(name)); expected Euler, Midpoint, Heun, RK4, BS3, DP5, Tsit5, " *
        "DP8, ImplicitEuler or Kvaerno5"))
end

"""
    make_vjp(name)

The `autojacvec` of a continuous adjoint: `"auto"` -> `nothing` (SciMLSensitivity chooses), `"zygote"` ->
`ZygoteVJP()`, `"reversediff"` -> `ReverseDiffVJP(true)` (compiled tape), `"enzyme"` -> `EnzymeVJP()`.
"""
function make_vjp(name::AbstractString)
    name == "auto" && return nothing
    name == "zygote" && return ZygoteVJP()
    name == "reversediff" && return ReverseDiffVJP(true)
    name == "enzyme" && return EnzymeVJP()
    throw(ArgumentError("unknown vjp $(repr(name)); expected auto, zygote, reversediff or enzyme"))
end

"""
    make_sensealg(kind, vjp = "auto", checkpointing = false; quad_abstol = 1e-6, quad_reltol = 1e-3)

The SciMLSensitivity algorithm named `kind`. `checkpointing` is used by `BacksolveAdjoint` (crossode passes
`false`: a pure backsolve, as in torchdiffeq and Diffrax), `InterpolatingAdjoint` and `GaussAdjoint`;
`quad_abstol`/`quad_reltol` are `QuadratureAdjoint`'s own quadrature tolerances (crossode passes the solve's).
"""
function make_sensealg(kind::AbstractString, vjp::AbstractString = "auto", checkpointing::Bool = false;
        quad_abstol::Real = 1.0e-6, quad_reltol::Real = 1.0e-3)
    kind == "ReverseDiffAdjoint" && return ReverseDiffAdjoint()
    kind == "ForwardDiffSensitivity" && return ForwardDiffSensitivity()
    v = make_vjp(vjp)
    kind == "BacksolveAdjoint" && return BacksolveAdjoint(autojacvec = v, checkpointing = checkpointing)
    kind == "InterpolatingAdjoint" && return InterpolatingAdjoint(autojacvec = v, checkpointing = checkpointing)
    kind == "QuadratureAdjoint" &&
        return QuadratureAdjoint(autojacvec = v, abstol = Float64(quad_abstol), reltol = Float64(quad_reltol))
    kind == "GaussAdjoint" && return GaussAdjoint(autojacvec = v, checkpointing = checkpointing)
    throw(ArgumentError("unknown sensealg $(repr(kind)); expected ReverseDiffAdjoint, ForwardDiffSensitivity, " *
        "BacksolveAdjoint, InterpolatingAdjoint, QuadratureAdjoint or GaussAdjoint"))
end

"""
    status_of(retcode)

crossode's status for a `SciMLBase.ReturnCode`: `"ok"` for every successful code, `"max_steps"`,
`"step_size_too_small"`, `"diverged"` (`Unstable`, `DtNaN`), else `"solver_error"`.
"""
function status_of(retcode)
    SciMLBase.successful_retcode(retcode) && return "ok"
    retcode == ReturnCode.MaxIters && return "max_steps"
    retcode == ReturnCode.DtLessThanMin && return "step_size_too_small"
    retcode == ReturnCode.Unstable && return "diverged"
    retcode == ReturnCode.DtNaN && return "diverged"
    return "solver_error"
end

retcode_name(retcode) = String(last(split(string(retcode), '.')))

# ------------------------------------------------------------------------------------------ vector field

"""
    Counted(f, calls)

A vector field that adds one to `calls[]` on every evaluation (in-place and out-of-place forms).
"""
struct Counted{F} <: Function
    f::F
    calls::Base.RefValue{Int}
end

_tick!(calls::Base.RefValue{Int}) = (calls[] += 1; nothing)

function (c::Counted)(u, p, t)
    ignore_derivatives(() -> _tick!(c.calls))
    return c.f(u, p, t)
end

function (c::Counted)(du, u, p, t)
    ignore_derivatives(() -> _tick!(c.calls))
    return c.f(du, u, p, t)
end

"""
    load_rhs(src)

Evaluate generated source (one expression returning `(oop = f, iip = f!)`) in a fresh anonymous module.
"""
function load_rhs(src::AbstractString)
    mod = Module(:CrossODEGenerated)
    fns = Base.include_string(mod, String(src), "crossode_generated_rhs.jl")
    (hasproperty(fns, :oop) && hasproperty(fns, :iip)) ||
        throw(ArgumentError("generated source must evaluate to (oop = f, iip = f!); got $(typeof(fns))"))
    return fns
end

_float_type(dtype::AbstractString) = dtype == "float64" ? Float64 : dtype == "float32" ? Float32 :
    throw(ArgumentError("dtype must be \"float64\" or \"float32\"; got $(repr(dtype))"))

function _to_device(x::AbstractArray, device::AbstractString)
    device == "cpu" && return x
    device == "cuda" || throw(ArgumentError("device must be \"cpu\" or \"cuda\"; got $(repr(device))"))
    cuda = Base.require(CUDA_PKGID)  # optional: install CUDA.jl into the juliacall environment to use it
    return Base.invokelatest(getproperty(cuda, :CuArray), x)
end

# ------------------------------------------------------------------------------------------ cells

"""
    Cell

Everything one crossode cell needs: problem (with the counted field), algorithm, sensealg, solve keywords,
loss weights (`nothing` for the sum of squares), number of saved times and the call counter.
"""
struct Cell{P, A, S, K, W}
    prob::P
    alg::A
    sensealg::S
    kwargs::K
    weights::W
    nsave::Int
    calls::Base.RefValue{Int}
end

function _solve_kwargs(::Type{T}, o) where {T}
    ts = Vector{T}(collect(o.saveat))
    if o.adaptive
        kw = (; saveat = ts, abstol = T(o.abstol), reltol = T(o.reltol), maxiters = Int(o.maxiters))
        return o.dt === nothing ? kw : merge(kw, (; dt = T(o.dt)))
    end
    o.dt === nothing && throw(ArgumentError("fixed steps need dt"))
    o.tstops === nothing && throw(ArgumentError("fixed steps need tstops (crossode's fixed_grid)"))
    tstops = Vector{T}(collect(o.tstops))
    return (; saveat = ts, dt = T(o.dt), adaptive = false, tstops = tstops, maxiters = Int(o.maxiters))
end

"""
    build(; src, iip, u0, p, t0, t1, saveat, alg, sensealg, vjp = "auto", checkpointing = false,
          abstol = nothing, reltol = nothing, quad_abstol = 1e-6, quad_reltol = 1e-3, dt = nothing,
          adaptive = true, tstops = nothing, maxiters = 100_000, loss_kind = "sum_squares", weights = nothing,
          device = "cpu", dtype = "float64") -> Cell

`weights` has shape `(n_state, n_save)` (Julia's layout). Arrays may be any `AbstractArray` (juliacall passes
NumPy arrays as zero-copy `PyArray`s); they are copied into `Vector{T}`/`Matrix{T}` here.
"""
function build(; src::AbstractString, iip::Bool, u0, p, t0::Real, t1::Real, saveat, alg::AbstractString,
        sensealg::AbstractString, vjp::AbstractString = "auto", checkpointing::Bool = false,
        abstol = nothing, reltol = nothing, quad_abstol::Real = 1.0e-6, quad_reltol::Real = 1.0e-3,
        dt = nothing, adaptive::Bool = true, tstops = nothing, maxiters::Integer = 100_000,
        loss_kind::AbstractString = "sum_squares", weights = nothing, device::AbstractString = "cpu",
        dtype::AbstractString = "float64")
    fns = load_rhs(src)
    opts = (; iip, u0, p, t0, t1, saveat, alg, sensealg, vjp, checkpointing, abstol, reltol, quad_abstol,
        quad_reltol, dt, adaptive, tstops, maxiters, loss_kind, weights, device, dtype)
    return Base.invokelatest(_assemble, fns, opts)
end

function _assemble(fns, o)
    T = _float_type(o.dtype)
    calls = Ref(0)
    f = Counted(o.iip ? fns.iip : fns.oop, calls)
    u0 = _to_device(Vector{T}(collect(o.u0)), o.device)
    p = _to_device(Vector{T}(collect(o.p)), o.device)
    prob = ODEProblem{o.iip, SciMLBase.FullSpecialize}(f, u0, (T(o.t0), T(o.t1)), p)
    kwargs = _solve_kwargs(T, o)
    sensealg = make_sensealg(o.sensealg, o.vjp, o.checkpointing; quad_abstol = o.quad_abstol,
        quad_reltol = o.quad_reltol)
    nsave = length(kwargs.saveat)
    if o.loss_kind == "sum_squares"
        weights = nothing
    elseif o.loss_kind == "linear"
        weights = Matrix{T}(collect(o.weights))
        size(weights) == (length(u0), nsave) ||
            throw(DimensionMismatch("weights must be (n_state, n_save) = ($(length(u0)), $nsave); got $(size(weights))"))
    else
        throw(ArgumentError("loss_kind must be \"sum_squares\" or \"linear\"; got $(repr(o.loss_kind))"))
    end
    return Cell(prob, make_alg(o.alg), sensealg, kwargs, weights, nsave, calls)
end

# ------------------------------------------------------------------------------------------ loss and gradient

_match(Y, ::Nothing) = nothing
_match(Y::Array, W::Array) = W
_match(Y, W) = copyto!(similar(Y, eltype(W), size(W)), W)  # weights onto the device of Y

_loss(Y, ::Nothing) = sum(abs2, Y) / 2
_loss(Y, W) = sum(W .* Y)

"""
    save_indices(t, ts)

Indices `j` with `t[j] == ts[k]` for every save time `ts[k]`, in order (to within a few ulps), or `nothing` when
one is missing (a failed solve). Needed because `BacksolveAdjoint`'s forward pass also saves the start and end
points (SciMLSensitivity forces `save_start = save_end = true` there), so `sol.t` can hold more than `saveat`.
"""
function save_indices(t::AbstractVector, ts::AbstractVector)
    idx = Int[]
    j = 1
    for s in ts
        tol = 8 * eps(float(typeof(s))) * max(one(s), abs(s))
        while j <= length(t) && abs(t[j] - s) > tol
            j += 1
        end
        j > length(t) && return nothing
        push!(idx, j)
        j += 1
    end
    return idx
end

function _loss_and_solution(prob, alg, sensealg, kwargs, weights, ts, u0, p)
    sol = solve(prob, alg; u0 = u0, p = p, sensealg = sensealg, kwargs...)
    idx = ignore_derivatives(() -> save_indices(sol.t, ts))
    idx === nothing && return (NaN, sol)  # a failed solve: the status says why, no gradient is computed
    Y = Array(sol)
    Ys = idx == 1:size(Y, 2) ? Y : Y[:, idx]
    W = ignore_derivatives(() -> _match(Ys, weights))
    return (_loss(Ys, W), sol)
end

function _stats(sol)
    sol.stats === nothing && return (nf = -1, naccept = -1, nreject = -1)
    return (nf = Int(sol.stats.nf), naccept = Int(sol.stats.naccept), nreject = Int(sol.stats.nreject))
end

_host(::Nothing, n::Integer) = zeros(Float64, n)
_host(x, n::Integer) = Vector{Float64}(Array(vec(x)))

_seconds(a, b) = (b - a) / 1.0e9

"""
    gradient_cell(cell) -> NamedTuple

Loss and gradients with the cell's sensealg. Fields: `status`, `retcode`, `loss`, `du0`, `dp` (host
`Vector{Float64}`, zeros when the solve failed), `nf`, `naccept`, `nreject` (forward `sol.stats`, -1 if absent),
`calls_forward`, `calls_backward` (counted RHS calls), `time_forward_s`, `time_total_s`.
"""
gradient_cell(cell::Cell) = Base.invokelatest(_gradient, cell)

function _gradient(cell::Cell)
    prob, alg, sensealg, kwargs = cell.prob, cell.alg, cell.sensealg, cell.kwargs
    weights = cell.weights
    u0, p = prob.u0, prob.p
    calls0 = cell.calls[]
    start = time_ns()
    lossfun = (u0_, p_) -> _loss_and_solution(prob, alg, sensealg, kwargs, weights, kwargs.saveat, u0_, p_)
    local l, sol, back
    try
        (l, sol), back = Zygote.pullback(lossfun, u0, p)
    catch err
        # Adjoint forward passes can throw on a truncated solution (e.g. interpolating saveat past a MaxIters
        # stop). Report the forward solver's status when it failed; otherwise this is a genuine error.
        fsol = solve(prob, alg; kwargs...)
        status_of(fsol.retcode) == "ok" && rethrow()
        return _failed_gradient(fsol, cell, calls0, start)
    end
    forward_done = time_ns()
    calls_forward = cell.calls[] - calls0
    status = status_of(sol.retcode)
    status == "ok" && save_indices(sol.t, kwargs.saveat) === nothing && (status = "solver_error")
    status == "ok" && !isfinite(l) && (status = "diverged")
    du0, dp = nothing, nothing
    if status == "ok"
        du0, dp = back((one(l), nothing))
    end
    stop = time_ns()
    st = _stats(sol)
    return (; status, retcode = retcode_name(sol.retcode), loss = Float64(l),
        du0 = _host(du0, length(u0)), dp = _host(dp, length(p)),
        nf = st.nf, naccept = st.naccept, nreject = st.nreject,
        calls_forward, calls_backward = cell.calls[] - calls0 - calls_forward,
        time_forward_s = _seconds(start, forward_done), time_total_s = _seconds(start, stop))
end

function _failed_gradient(sol, cell::Cell, calls0::Integer, start)
    stop = time_ns()
    st = _stats(sol)
    return (; status = status_of(sol.retcode), retcode = retcode_name(sol.retcode), loss = NaN,
        du0 = zeros(Float64, length(cell.prob.u0)), dp = zeros(Float64, length(cell.prob.p)),
        nf = st.nf, naccept = st.naccept, nreject = st.nreject,
        calls_forward = cell.calls[] - calls0, calls_backward = 0,
        time_forward_s = _seconds(start, stop), time_total_s = _seconds(start, stop))
end

"""
    solve_cell(cell) -> NamedTuple

Forward solve only. Fields: `status`, `retcode`, `ys` (`(n_state, n_save)` host `Matrix{Float64}`; zero columns
when the solve failed), `t`, `nf`, `naccept`, `nreject`, `calls`, `time_s`.
"""
solve_cell(cell::Cell) = Base.invokelatest(_solve, cell)

function _solve(cell::Cell)
    calls0 = cell.calls[]
    start = time_ns()
    sol = solve(cell.prob, cell.alg; cell.kwargs...)
    stop = time_ns()
    status = status_of(sol.retcode)
    idx = save_indices(sol.t, cell.kwargs.saveat)
    ys = idx === nothing ? zeros(Float64, length(cell.prob.u0), 0) : Matrix{Float64}(Array(Array(sol)))[:, idx]
    status == "ok" && idx === nothing && (status = "solver_error")
    status == "ok" && !all(isfinite, ys) && (status = "diverged")
    st = _stats(sol)
    return (; status, retcode = retcode_name(sol.retcode), ys, t = Vector{Float64}(Array(sol.t)),
        nf = st.nf, naccept = st.naccept, nreject = st.nreject, calls = cell.calls[] - calls0,
        time_s = _seconds(start, stop))
end

"""
    versions() -> Dict{String, String}

Versions of Julia and of the packages this module drives (recorded with every crossode result).
"""
function versions()
    mods = ("SciMLBase" => SciMLBase, "SciMLSensitivity" => parentmodule(GaussAdjoint),
        "OrdinaryDiffEqTsit5" => parentmodule(Tsit5), "OrdinaryDiffEqLowOrderRK" => parentmodule(RK4),
        "OrdinaryDiffEqSDIRK" => parentmodule(Kvaerno5), "Zygote" => Zygote)
    out = Dict{String, String}("julia" => string(VERSION))
    for (name, mod) in mods
        v = pkgversion(mod)
        v === nothing || (out[name] = string(v))
    end
    return out
end

# ------------------------------------------------------------------------------------------ warm-up

const WARMUP_SRC = """
let
    rhs_oop(u, p, t) = [p[1] * u[1] + p[2] * u[2], -p[2] * u[1] + p[1] * u[2]]
    function rhs_iip!(du, u, p, t)
        du[1] = p[1] * u[1] + p[2] * u[2]
        du[2] = -p[2] * u[1] + p[1] * u[2]
        return nothing
    end
    (oop = rhs_oop, iip = rhs_iip!)
end
"""

"""
    warmup(; io = stdout) -> Int

Compile the common paths once (Tsit5 with every sensealg, Kvaerno5 with `GaussAdjoint`) on a 2-state problem;
prints one line per combination and returns the number of failures. Used by `crossode julia-setup`.
"""
function warmup(; io::IO = stdout)
    failures = 0
    combos = [("Tsit5", "ReverseDiffAdjoint", "auto", false), ("Tsit5", "ForwardDiffSensitivity", "auto", false),
        ("Tsit5", "BacksolveAdjoint", "auto", false), ("Tsit5", "InterpolatingAdjoint", "auto", false),
        ("Tsit5", "InterpolatingAdjoint", "auto", true), ("Tsit5", "QuadratureAdjoint", "auto", false),
        ("Tsit5", "GaussAdjoint", "auto", false), ("Tsit5", "GaussAdjoint", "zygote", false),
        ("Kvaerno5", "GaussAdjoint", "auto", false)]
    for (alg, kind, vjp, ckpt) in combos
        t = time_ns()
        try
            cell = build(; src = WARMUP_SRC, iip = vjp != "zygote", u0 = [1.0, 0.0], p = [-0.1, 1.0], t0 = 0.0,
                t1 = 1.0, saveat = [0.5, 1.0], alg, sensealg = kind, vjp, checkpointing = ckpt, abstol = 1.0e-8,
                reltol = 1.0e-6)
            res = gradient_cell(cell)
            println(io, "  $alg + $kind(vjp=$vjp, checkpointing=$ckpt): $(res.status) in ",
                round(_seconds(t, time_ns()); digits = 1), " s")
        catch err
            failures += 1
            println(io, "  $alg + $kind(vjp=$vjp, checkpointing=$ckpt): FAILED: ", sprint(showerror, err))
        end
    end
    return failures
end

end # module CrossODE
