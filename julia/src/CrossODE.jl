"""
    CrossODE

Julia side of crossode's Julia backend. It builds an `ODEProblem` from generated source text, solves it with an
OrdinaryDiffEq algorithm, and differentiates a scalar loss of the saved trajectory with `Zygote.pullback` and an
explicit SciMLSensitivity `sensealg`. Python calls it through juliacall (`crossode/backends/julia/_backend.py`
loads this file with `include`); Julia can use it directly (`julia/test/runtests.jl`).

Workflow:

1. `cell = build(; src, iip, u0, p, t0, t1, saveat, alg, sensealg, ...)` evaluates `src` (one Julia expression that
   evaluates to `(oop = f, iip = f!)`, written by `crossode/backends/julia/_field.py`) with `include_string` in a
   fresh anonymous module, wraps the chosen form in a call counter, resolves `vjp = "auto"` once, and stores
   problem, algorithm, sensealg and solve keywords in a `Cell`. Every solve keyword comes from one `build`
   keyword (`_solve_kwargs`); Python decides them all (`crossode/backends/julia/_marshal.py::build_call`).
2. `gradient_cell(cell)` returns a `NamedTuple` with `status`, `retcode`, `loss`, `du0`, `dp`, solver statistics,
   RHS call counts and timings; `solve_cell(cell)` the forward solution `ys` as an `(n_state, n_save)` matrix
   (Julia's layout: Python transposes it). `cell_info(cell)` says what runs (resolved VJP, keyword names).

World age: the generated function is defined at run time, so `gradient_cell`/`solve_cell` enter through
`Base.invokelatest`; they work whether they are called in the same top-level expression as `build` or later.

Semantics kept identical to the other crossode backends:

- loss on the saved states `Y = Array(sol)` (`(n_state, n_save)`): `"sum_squares"` is `sum(abs2, Y) / 2`,
  `"linear"` is `sum(W .* Y)` with `W` of the same shape (Python passes the transpose of its `(n_save, n_state)`
  weights), `"mse"` is `sum(abs2, Y .- D) / 2` with the data targets `D` of the same shape (wrapped in `Targets`),
  `"cnf_nll"` the continuous normalizing flow's negative log-likelihood on the last save (`CNFNLL`, `cnf_dims = d`);
- batches: a batched problem's `(batch, n)` state arrives flattened row-major as one vector of length `batch * n`
  (the generated field reshapes it), so the batch is one solve with the error norm over all its entries;
- saves: exactly at `saveat` (`save_start`/`save_end` passed explicitly, so `sol.t == saveat` for every sensealg;
  SciMLSensitivity's adjoints default both to `true`, `src/concrete_solve.jl`);
- adaptive steps: `controller = CrossODEController()` (the PyTorch/JAX rule, below), `tstops = saveat` (every save
  time is a step end, as in PyTorch and JAX), `isoutofdomain = nonfinite_state` (a non-finite candidate state is a
  rejected step, shrunk by `qmin`), `dtmin`/`dtmax` from Python; the first step `dt0` is stored in the *problem*'s
  keywords, so it applies to the forward solve and its re-solves but not to the backward adjoint solve (an
  `ODEAdjointProblem` is a new problem, `src/interpolating_adjoint.jl`, `src/gauss_adjoint.jl`, ...);
- fixed steps: `dt`, `adaptive = false` and `tstops` = crossode's `fixed_grid`, so every step ends on the grid;
  implicit solvers get `abstol = reltol` = tight Newton tolerances (OrdinaryDiffEqNonlinearSolve scales the Newton
  update by them, `src/newton.jl`);
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
using OrdinaryDiffEqCore: OrdinaryDiffEqCore, AbstractController, AbstractControllerCache, get_EEst,
    get_current_adaptive_order, resolve_basic
import OrdinaryDiffEqCore: setup_controller_cache, stepsize_controller!, step_accept_controller!,
    step_reject_controller!
using OrdinaryDiffEqTsit5: Tsit5
using OrdinaryDiffEqLowOrderRK: BS3, DP5, Euler, Heun, Midpoint, RK4
using OrdinaryDiffEqHighOrderRK: DP8
using OrdinaryDiffEqSDIRK: ImplicitEuler, Kvaerno5
using SciMLSensitivity: SciMLSensitivity, BacksolveAdjoint, EnzymeVJP, ForwardDiffSensitivity, GaussAdjoint,
    InterpolatingAdjoint, QuadratureAdjoint, ReverseDiffAdjoint, ReverseDiffVJP, ZygoteVJP
using ADTypes: AutoFiniteDiff
using ChainRulesCore: ignore_derivatives
import NaNMath
import Optimisers
import Zygote

export Cell, Counted, CrossODEController, build, gradient_cell, solve_cell, cell_info, status_of, make_alg,
    make_sensealg, make_vjp, resolve_vjp, vjp_name, load_rhs, primal_norm, nonfinite_state, versions, warmup,
    Training, make_training, train_step!, training_params

const CUDA_PKGID = Base.PkgId(Base.UUID("052768ef-5323-5732-b1bb-66c8b64840ba"), "CUDA")

# ------------------------------------------------------------------------------------------ algorithms

"""
    make_alg(name, autodiff = "default")

The OrdinaryDiffEq algorithm for a crossode solver name (`crossode/backends/julia/_marshal.py::SOLVER_ALGS`).
`autodiff = "finite"` builds an implicit solver with `autodiff = AutoFiniteDiff()` (finite-difference Jacobians);
`"default"` keeps OrdinaryDiffEq's `AutoForwardDiff()`. crossode uses `"finite"` for `ReverseDiffAdjoint`: with a
ForwardDiff Jacobian (`SciMLBase.forwarddiffs_model(alg) == true`) SciMLSensitivity's own
`test/Core2/stiff_adjoints.jl` marks `ReverseDiffAdjoint()` `@test_broken`, and `test/Core1/
concrete_solve_derivatives.jl` runs it with `Rosenbrock23(autodiff = AutoFiniteDiff())`.
"""
function make_alg(name::AbstractString, autodiff::AbstractString = "default")
    autodiff in ("default", "finite") ||
        throw(ArgumentError("autodiff must be \"default\" or \"finite\"; got $(repr(autodiff))"))
    finite = autodiff == "finite"
    name == "ImplicitEuler" && return finite ? ImplicitEuler(autodiff = AutoFiniteDiff()) : ImplicitEuler()
    name == "Kvaerno5" && return finite ? Kvaerno5(autodiff = AutoFiniteDiff()) : Kvaerno5()
    finite && throw(ArgumentError("autodiff = \"finite\" applies to the implicit solvers only; got $(repr(name))"))
    name == "Euler" && return Euler()
    name == "Midpoint" && return Midpoint()
    name == "Heun" && return Heun()
    name == "RK4" && return RK4()
    name == "BS3" && return BS3()
    name == "DP5" && return DP5()
    name == "Tsit5" && return Tsit5()
    name == "DP8" && return DP8()
    throw(ArgumentError("unknown solver $(repr(name)); expected Euler, Midpoint, Heun, RK4, BS3, DP5, Tsit5, " *
        "DP8, ImplicitEuler or Kvaerno5"))
end

"""
    make_vjp(name)

The `autojacvec` of a continuous adjoint: `"auto"` -> `nothing` (SciMLSensitivity chooses, on every call; `build`
resolves it once with `resolve_vjp` instead), `"zygote"` -> `ZygoteVJP()`, `"reversediff"` -> `ReverseDiffVJP(true)`
(compiled tape), `"enzyme"` -> `EnzymeVJP()`.
"""
function make_vjp(name::AbstractString)
    name == "auto" && return nothing
    name == "zygote" && return ZygoteVJP()
    name == "reversediff" && return ReverseDiffVJP(true)
    name == "enzyme" && return EnzymeVJP()
    throw(ArgumentError("unknown vjp $(repr(name)); expected auto, zygote, reversediff or enzyme"))
end

"""
    resolve_vjp(name, prob)

`make_vjp(name)`, except that `"auto"` is resolved once, for `prob`, exactly as SciMLSensitivity resolves
`autojacvec = nothing` on every gradient (`src/sensitivity_interface.jl::adjoint_sensitivities`): `ZygoteVJP()` for
an out-of-place problem (crossode passes no callbacks), else `SciMLSensitivity.inplace_vjp` (`src/concrete_solve.jl`:
an Enzyme probe, Enzyme with runtime activity, then a ReverseDiff tape, compiled unless the field branches;
`false`, a Jacobian-based product, if all fail). Passing the result keeps the probes out of the timed gradient
calls and out of the backward call count, and keeps SciMLSensitivity from silently re-running a failed backward
pass with a Jacobian-based product.
"""
function resolve_vjp(name::AbstractString, prob)
    name == "auto" || return make_vjp(name)
    SciMLBase.isinplace(prob) || return ZygoteVJP()
    return SciMLSensitivity.inplace_vjp(prob, prob.u0, prob.p, false, identity)
end

"""
    vjp_name(vjp)

crossode's name of a VJP choice: `"zygote"`, `"enzyme"`, `"reversediff"` (compiled tape), `"reversediff_uncompiled"`,
`"jacobian"` (`autojacvec = false`), `"auto"` (`nothing`).
"""
vjp_name(::Nothing) = "auto"
vjp_name(::ZygoteVJP) = "zygote"
vjp_name(::EnzymeVJP) = "enzyme"
vjp_name(::ReverseDiffVJP{true}) = "reversediff"
vjp_name(::ReverseDiffVJP{false}) = "reversediff_uncompiled"
vjp_name(v::Bool) = v ? "jacobian_jvp" : "jacobian"
vjp_name(v) = string(v)

"""
    make_sensealg(kind, vjp = "auto", checkpointing = false; quad_abstol = 1e-6, quad_reltol = 1e-3)

The SciMLSensitivity algorithm named `kind`; `vjp` is a crossode name (`make_vjp`) or an `autojacvec` value.
`checkpointing` is used by `BacksolveAdjoint` (crossode passes `false`: a pure backsolve, as in torchdiffeq and
Diffrax), `InterpolatingAdjoint` and `GaussAdjoint`; `quad_abstol`/`quad_reltol` are `QuadratureAdjoint`'s own
quadrature tolerances (crossode passes the solve's).
"""
function make_sensealg(kind::AbstractString, vjp = "auto", checkpointing::Bool = false;
        quad_abstol::Real = 1.0e-6, quad_reltol::Real = 1.0e-3)
    kind == "ReverseDiffAdjoint" && return ReverseDiffAdjoint()
    kind == "ForwardDiffSensitivity" && return ForwardDiffSensitivity()
    v = vjp isa AbstractString ? make_vjp(vjp) : vjp
    kind == "BacksolveAdjoint" && return BacksolveAdjoint(autojacvec = v, checkpointing = checkpointing)
    kind == "InterpolatingAdjoint" && return InterpolatingAdjoint(autojacvec = v, checkpointing = checkpointing)
    kind == "QuadratureAdjoint" &&
        return QuadratureAdjoint(autojacvec = v, abstol = Float64(quad_abstol), reltol = Float64(quad_reltol))
    kind == "GaussAdjoint" && return GaussAdjoint(autojacvec = v, checkpointing = checkpointing)
    throw(ArgumentError("unknown sensealg $(repr(kind)); expected ReverseDiffAdjoint, ForwardDiffSensitivity, " *
        "BacksolveAdjoint, InterpolatingAdjoint, QuadratureAdjoint or GaussAdjoint"))
end

_is_adjoint(kind::AbstractString) = !(kind in ("ReverseDiffAdjoint", "ForwardDiffSensitivity"))

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

# ------------------------------------------------------------------------------------------ step-size control

"""
    CrossODEController(; qmin = 0.2, qmax = 10.0, gamma = 0.9, failfactor = 5.0)

The adaptive step-size controller of crossode's PyTorch backend (`crossode/backends/torch/_control.py::
StepController`) and JAX backend (`crossode/backends/jax/_control.py::LandingController`), as an OrdinaryDiffEqCore
controller (the public controller interface of OrdinaryDiffEqCore 4, `src/integrators/controllers.jl`). With the
error norm `EEst` of the attempted step `h` and `k = get_current_adaptive_order(alg, cache) + 1` (crossode's
`error_order` for every solver it maps):

- accepted (`EEst <= 1`): next step `h * clamp(gamma * EEst^(-1/k), 1, qmax)` (`qmax` when `EEst == 0`); when `h`
  was shortened to land on a `tstop`, the next step is at least the proposal before shortening;
- rejected: `h * clamp(gamma * EEst^(-1/k), qmin, gamma)` (`qmin` when `EEst` is not finite; a non-finite candidate
  state is rejected by `isoutofdomain = nonfinite_state`, which OrdinaryDiffEq also shrinks by `qmin`);
- a Newton failure of an implicit solver shrinks the step by `failfactor = 1/qmin` (Diffrax rejects such a step
  with the smallest factor).

It is `IController` (same file) with two differences that make OrdinaryDiffEq take the same steps as PyTorch and
JAX: the factor is computed with `^`, where `IController` uses `FastPower.fastpower` (a Float32 `log2`
polynomial, relative error ~1e-4); and after a landing step `IController` multiplies the restored pre-landing
proposal (`_loopfooter!` in `src/integrators/integrator_utils.jl` sets `integrator.dt = integrator.dtpropose`),
where PyTorch and JAX take `max(shortened step * factor, proposal)`.
"""
struct CrossODEController{B} <: AbstractController
    basic::B
end

function CrossODEController(; qmin::Real = 0.2, qmax::Real = 10.0, gamma::Real = 0.9, failfactor::Real = 5.0)
    basic = (; qmin = Float64(qmin), qmax = Float64(qmax), qmax_first_step = Float64(qmax),
        gamma = Float64(gamma), qsteady_min = 1.0, qsteady_max = 1.0, failfactor = Float64(failfactor))
    return CrossODEController(basic)
end

"""Per-solve state of `CrossODEController`: the error estimate, the step just attempted and its factor."""
mutable struct CrossODEControllerCache{B, E} <: AbstractControllerCache
    controller::CrossODEController{B}
    EEst::E
    h_try::Float64
    factor::Float64
end

function setup_controller_cache(alg, cache, controller::CrossODEController, ::Type{E}, disco_probs) where {E}
    # resolve_basic fills a CommonControllerOptions, which OrdinaryDiffEqCore's accessors read
    # (`get_qmin(integrator)` -> `cache.controller.basic.qmin`, used after an `isoutofdomain` rejection)
    basic = resolve_basic(controller.basic, alg, Float64; disco_probs)
    return CrossODEControllerCache(CrossODEController(basic), oneunit(E), 0.0, 1.0)
end

function stepsize_controller!(integrator, cache::CrossODEControllerCache, alg)
    (; qmin, qmax, gamma) = cache.controller.basic
    EEst = Float64(SciMLBase.value(get_EEst(cache)))
    k = get_current_adaptive_order(alg, integrator.cache) + 1
    cache.h_try = abs(Float64(SciMLBase.value(integrator.dt)))
    factor = if !isfinite(EEst)
        qmin
    elseif iszero(EEst)
        qmax
    else
        raw = gamma * EEst^(-1 / k)
        EEst <= 1 ? clamp(raw, 1.0, qmax) : clamp(raw, qmin, gamma)
    end
    cache.factor = factor
    return inv(factor)  # OrdinaryDiffEq's convention: dt_new = dt / q
end

function step_accept_controller!(integrator, cache::CrossODEControllerCache, alg, q)
    # `integrator.dt` is the attempted step, or the proposal before a landing shortened it (see the docstring)
    h = max(cache.h_try * cache.factor, abs(Float64(SciMLBase.value(integrator.dt))))
    return integrator.tdir * h
end

function step_reject_controller!(integrator, cache::CrossODEControllerCache, alg)
    integrator.dt = integrator.tdir * (cache.h_try * cache.factor)
    return integrator.dt
end

"""
    primal_norm(u, t)

The RMS norm of the primal values of `u` (`SciMLBase.value` strips ForwardDiff partials). Passed as
`internalnorm` with `ForwardDiffSensitivity`: OrdinaryDiffEq's default norm of a Dual array includes the partials
(`lib/DiffEqBase/ext/DiffEqBaseForwardDiffExt.jl`), so the dual-number solves would choose other steps than the
primal and the gradient would not be the derivative of the reported discretisation. On plain floats it is the
default RMS norm (`ODE_DEFAULT_NORM`).
"""
function primal_norm(u::AbstractArray, t)
    isempty(u) && return zero(real(float(SciMLBase.value(zero(eltype(u))))))
    s = sum(x -> abs2(SciMLBase.value(x)), u)
    return sqrt(s / length(u))
end
primal_norm(u::Number, t) = abs(SciMLBase.value(u))

"""
    nonfinite_state(u, p, t)

`true` when a candidate state holds an Inf or NaN. Passed as `isoutofdomain` in adaptive solves: the step is
rejected and shrunk by the controller's `qmin` (OrdinaryDiffEqCore `handle_step_rejection!`), the PyTorch/JAX rule
for a non-finite error norm. Generated fields return NaN instead of throwing `DomainError` (NaNMath), so a step
that leaves the domain of `sqrt`/`log`/`x^1.5` is retried smaller, as in PyTorch and JAX.
"""
nonfinite_state(u, p, t) = !all(isfinite, u)

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

Evaluate generated source (one expression returning `(oop = f, iip = f!)`) in a fresh anonymous module in which
`NaNMath` names the NaNMath.jl module (the generated code calls `NaNMath.sqrt`, `NaNMath.pow`, ...).
"""
function load_rhs(src::AbstractString)
    mod = Module(:CrossODEGenerated)
    Core.eval(mod, :(const NaNMath = $NaNMath))
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
loss weights (`nothing` for the sum of squares, `Targets` for mse, `CNFNLL` for cnf_nll), number of saved times and parameters, the crossode name of the
VJP that runs and the call counter.
"""
struct Cell{P, A, S, K, W}
    prob::P
    alg::A
    sensealg::S
    kwargs::K
    weights::W
    nsave::Int
    nparams::Int
    vjp::String
    calls::Base.RefValue{Int}
end

_tag(name, value, allowed) = value in allowed ? value :
    throw(ArgumentError("$name must be one of $(join(repr.(allowed), ", ")); got $(repr(value))"))

"""
    _solve_kwargs(T, o)

The keywords of every `solve` of a cell, each from the `build` keyword of the same name (`dt0` is a problem
keyword, see `_assemble`). Mirrored by `crossode/backends/julia/_marshal.py::JuliaCall.solve_keywords`.
"""
function _solve_kwargs(::Type{T}, o) where {T}
    ts = Vector{T}(collect(o.saveat))
    isempty(ts) && throw(ArgumentError("saveat must hold at least one time"))
    save_start = o.save_start === nothing ? first(ts) == T(o.t0) : Bool(o.save_start)
    save_end = o.save_end === nothing ? last(ts) == T(o.t1) : Bool(o.save_end)
    kw = (; saveat = ts, save_start = save_start, save_end = save_end, adaptive = Bool(o.adaptive),
        maxiters = Int(o.maxiters))
    o.dt === nothing || (kw = merge(kw, (; dt = T(o.dt))))
    o.tstops === nothing || (kw = merge(kw, (; tstops = Vector{T}(collect(o.tstops)))))
    o.abstol === nothing || (kw = merge(kw, (; abstol = T(o.abstol))))
    o.reltol === nothing || (kw = merge(kw, (; reltol = T(o.reltol))))
    o.dtmin === nothing || (kw = merge(kw, (; dtmin = T(o.dtmin))))
    o.dtmax === nothing || (kw = merge(kw, (; dtmax = T(o.dtmax))))
    _tag("controller", o.controller, ("default", "crossode")) == "crossode" &&
        (kw = merge(kw, (; controller = CrossODEController())))
    _tag("internalnorm", o.internalnorm, ("default", "primal")) == "primal" &&
        (kw = merge(kw, (; internalnorm = primal_norm)))
    _tag("isoutofdomain", o.isoutofdomain, ("default", "nonfinite")) == "nonfinite" &&
        (kw = merge(kw, (; isoutofdomain = nonfinite_state)))
    if !o.adaptive
        o.dt === nothing && throw(ArgumentError("fixed steps need dt"))
        o.tstops === nothing && throw(ArgumentError("fixed steps need tstops (crossode's fixed_grid)"))
        o.dt0 === nothing || throw(ArgumentError("dt0 is the first step of an adaptive solve; fixed steps use dt"))
    end
    return kw
end

"""
    build(; src, iip, u0, p, t0, t1, saveat, alg, sensealg, vjp = "auto", checkpointing = false,
          alg_autodiff = "default", adaptive = true, abstol = nothing, reltol = nothing, dt = nothing,
          dt0 = nothing, dtmin = nothing, dtmax = nothing, tstops = nothing, maxiters = 100_000,
          save_start = nothing, save_end = nothing, controller = "default", internalnorm = "default",
          isoutofdomain = "default", null_parameters = false, quad_abstol = 1e-6, quad_reltol = 1e-3,
          loss_kind = "sum_squares", weights = nothing, targets = nothing, cnf_dims = 0, device = "cpu",
          dtype = "float64") -> Cell

Keywords that are `nothing` are not passed to `solve` (OrdinaryDiffEq's defaults apply: `abstol = 1e-6`,
`reltol = 1e-3`, ...); `save_start`/`save_end = nothing` mean "`t0`/`t1` is a save time". `dt` is the fixed step
(`adaptive = false`), `dt0` the first step of an adaptive forward solve. `controller = "crossode"` selects
`CrossODEController()`, `internalnorm = "primal"` `primal_norm`, `isoutofdomain = "nonfinite"` `nonfinite_state`.
`null_parameters = true` (an empty `p` only) passes `SciMLBase.NullParameters()`: `ForwardDiffSensitivity` seeds
`length(p)`-sized chunks and divides by zero on an empty vector (`src/concrete_solve.jl`). `weights` (linear loss)
and `targets` (mse loss) have shape `(n_state, n_save)` (Julia's layout); `cnf_dims` is the sample dimension `d`
of a `"cnf_nll"` loss (each sample's state is `[x; logp]`, `d + 1` entries). Arrays may be any `AbstractArray` (juliacall passes NumPy arrays as zero-copy
`PyArray`s); they are copied into `Vector{T}`/`Matrix{T}` here.
"""
function build(; src::AbstractString, iip::Bool, u0, p, t0::Real, t1::Real, saveat, alg::AbstractString,
        sensealg::AbstractString, vjp::AbstractString = "auto", checkpointing::Bool = false,
        alg_autodiff::AbstractString = "default", adaptive::Bool = true, abstol = nothing, reltol = nothing,
        dt = nothing, dt0 = nothing, dtmin = nothing, dtmax = nothing, tstops = nothing,
        maxiters::Integer = 100_000, save_start = nothing, save_end = nothing,
        controller::AbstractString = "default", internalnorm::AbstractString = "default",
        isoutofdomain::AbstractString = "default", null_parameters::Bool = false, quad_abstol::Real = 1.0e-6,
        quad_reltol::Real = 1.0e-3, loss_kind::AbstractString = "sum_squares", weights = nothing,
        targets = nothing, cnf_dims::Integer = 0, device::AbstractString = "cpu", dtype::AbstractString = "float64")
    fns = load_rhs(src)
    opts = (; iip, u0, p, t0, t1, saveat, alg, sensealg, vjp, checkpointing, alg_autodiff, adaptive, abstol,
        reltol, dt, dt0, dtmin, dtmax, tstops, maxiters, save_start, save_end, controller, internalnorm,
        isoutofdomain, null_parameters, quad_abstol, quad_reltol, loss_kind, weights, targets, cnf_dims, device,
        dtype)
    return Base.invokelatest(_assemble, fns, opts)
end

function _parameters(::Type{T}, o) where {T}
    if o.null_parameters
        isempty(o.p) || throw(ArgumentError("null_parameters = true needs an empty p; got $(length(o.p)) values"))
        return SciMLBase.NullParameters()
    end
    return _to_device(Vector{T}(collect(o.p)), o.device)
end

function _assemble(fns, o)
    T = _float_type(o.dtype)
    calls = Ref(0)
    f = Counted(o.iip ? fns.iip : fns.oop, calls)
    u0 = _to_device(Vector{T}(collect(o.u0)), o.device)
    p = _parameters(T, o)
    kwargs = _solve_kwargs(T, o)
    # The first adaptive step is a *problem* keyword: SciMLBase merges `prob.kwargs` into the forward solve
    # (DiffEqBase `solve.jl`), SciMLSensitivity's forward, dual and tracked solves `remake` this problem, while
    # the backward `ODEAdjointProblem` is a new problem and picks its own first step.
    pkw = o.dt0 === nothing ? (;) : (; dt = T(o.dt0))
    prob = ODEProblem{o.iip, SciMLBase.FullSpecialize}(f, u0, (T(o.t0), T(o.t1)), p; pkw...)
    vjp = _is_adjoint(o.sensealg) ? resolve_vjp(o.vjp, prob) : nothing
    sensealg = make_sensealg(o.sensealg, vjp, o.checkpointing; quad_abstol = o.quad_abstol,
        quad_reltol = o.quad_reltol)
    nsave = length(kwargs.saveat)
    if o.loss_kind == "sum_squares"
        weights = nothing
    elseif o.loss_kind == "linear"
        weights = Matrix{T}(collect(o.weights))
        size(weights) == (length(u0), nsave) ||
            throw(DimensionMismatch("weights must be (n_state, n_save) = ($(length(u0)), $nsave); got $(size(weights))"))
    elseif o.loss_kind == "mse"
        data = Matrix{T}(collect(o.targets))
        size(data) == (length(u0), nsave) ||
            throw(DimensionMismatch("targets must be (n_state, n_save) = ($(length(u0)), $nsave); got $(size(data))"))
        weights = Targets(data)
    elseif o.loss_kind == "cnf_nll"
        (o.cnf_dims >= 1 && length(u0) % (o.cnf_dims + 1) == 0) ||
            throw(ArgumentError("cnf_nll needs cnf_dims = d >= 1 with length(u0) a multiple of d + 1; got cnf_dims = $(o.cnf_dims), length(u0) = $(length(u0))"))
        weights = CNFNLL(Int(o.cnf_dims), length(u0) ÷ (o.cnf_dims + 1))
    else
        throw(ArgumentError("loss_kind must be \"sum_squares\", \"linear\", \"mse\" or \"cnf_nll\"; got $(repr(o.loss_kind))"))
    end
    name = _is_adjoint(o.sensealg) ? vjp_name(vjp) : "none"
    return Cell(prob, make_alg(o.alg, o.alg_autodiff), sensealg, kwargs, weights, nsave, length(o.p), name, calls)
end

"""
    cell_info(cell) -> NamedTuple

What a cell runs: `vjp` (crossode's name of the VJP after resolving `"auto"`, `"none"` for
`ReverseDiffAdjoint`/`ForwardDiffSensitivity`), `sensealg` (its `repr`), `solve_keywords` and `problem_keywords`
(comma-separated names, sorted).
"""
function cell_info(cell::Cell)
    names(nt) = join(sort!([string(k) for k in keys(nt)]), ",")
    return (; vjp = cell.vjp, sensealg = repr(cell.sensealg), solve_keywords = names(cell.kwargs),
        problem_keywords = names(cell.prob.kwargs))
end

# ------------------------------------------------------------------------------------------ loss and gradient

"""
    Targets(data)

The data `D` of the `"mse"` loss `sum(abs2, Y .- D) / 2` (a wrapper, so `_loss` dispatches on the loss kind).
"""
struct Targets{M <: AbstractMatrix}
    data::M
end

"""
    CNFNLL(dims, batch)

The `"cnf_nll"` loss of a continuous normalizing flow: `batch` samples with state `[x; logp]` (`dims + 1` entries
each, sample after sample in the state vector), on the last saved state `[z; logp(t1)]`:
`dims / 2 * log(2pi) + (sum(abs2, z) / 2 + sum(logp)) / batch` (crossode's `Loss.apply` for `kind = "cnf_nll"`).
"""
struct CNFNLL
    dims::Int
    batch::Int
end

_match(Y, ::Nothing) = nothing
_match(Y, C::CNFNLL) = C
_match(Y::Array, W::Array) = W
_match(Y, W) = copyto!(similar(Y, eltype(W), size(W)), W)  # weights onto the device of Y
_match(Y, D::Targets) = Targets(_match(Y, D.data))

_loss(Y, ::Nothing) = sum(abs2, Y) / 2
_loss(Y, W) = sum(W .* Y)
_loss(Y, D::Targets) = sum(abs2, Y .- D.data) / 2

function _loss(Y, C::CNFNLL)
    T = eltype(Y)
    M = reshape(Y[:, end], C.dims + 1, C.batch)  # column b = sample b at the last save
    Z = M[1:C.dims, :]
    L = M[C.dims + 1, :]
    return T(C.dims) / 2 * log(2 * T(pi)) + (sum(abs2, Z) / 2 + sum(L)) / C.batch
end

# With save_start/save_end passed explicitly, every sensealg returns exactly the save times; fewer means the
# solve stopped early (a failed return code).
function _saved_all(t::AbstractVector, ts::AbstractVector)
    length(t) == length(ts) || return false
    return all(abs(a - b) <= 8 * eps(float(typeof(b))) * max(one(b), abs(b)) for (a, b) in zip(t, ts))
end

function _loss_and_solution(prob, alg, sensealg, kwargs, weights, u0, p)
    sol = solve(prob, alg; u0 = u0, p = p, sensealg = sensealg, kwargs...)
    ok = ignore_derivatives(() -> _saved_all(sol.t, kwargs.saveat))
    ok || return (NaN, sol)  # a failed solve: the status says why, no gradient is computed
    Y = Array(sol)
    W = ignore_derivatives(() -> _match(Y, weights))
    return (_loss(Y, W), sol)
end

function _stats(sol)
    sol.stats === nothing && return (nf = -1, naccept = -1, nreject = -1)
    return (nf = Int(sol.stats.nf), naccept = Int(sol.stats.naccept), nreject = Int(sol.stats.nreject))
end

_host(::Nothing, n::Integer) = zeros(Float64, n)
_host(x, n::Integer) = Vector{Float64}(Array(vec(x)))

_seconds(a, b) = (b - a) / 1.0e9

"""
    gradient_cell(cell[, p]) -> NamedTuple

Loss and gradients with the cell's sensealg, at the cell's parameters or at `p` (any vector of the same length,
copied to the parameters' element type and device). Fields: `status`, `retcode`, `loss`, `du0`, `dp` (host
`Vector{Float64}`, zeros when the solve failed), `nf`, `naccept`, `nreject` (forward `sol.stats`, -1 if absent),
`calls_forward`, `calls_backward` (counted RHS calls), `time_forward_s`, `time_total_s`.
"""
gradient_cell(cell::Cell) = Base.invokelatest(_gradient, cell, cell.prob.p)
gradient_cell(cell::Cell, p) = Base.invokelatest(_gradient, cell, _like(cell.prob.p, p))

function _gradient(cell::Cell, p)
    prob, alg, sensealg, kwargs = cell.prob, cell.alg, cell.sensealg, cell.kwargs
    weights = cell.weights
    u0 = prob.u0
    calls0 = cell.calls[]
    start = time_ns()
    lossfun = (u0_, p_) -> _loss_and_solution(prob, alg, sensealg, kwargs, weights, u0_, p_)
    local l, sol, back
    try
        (l, sol), back = Zygote.pullback(lossfun, u0, p)
    catch err
        # The forward pass of a sensealg can throw where a plain solve returns a failed return code: the
        # non-checkpointed Interpolating/Quadrature/Gauss adjoints solve densely and evaluate `sol(saveat)`
        # (`src/concrete_solve.jl`), and interpolating a solution that stopped early (MaxIters, DtLessThanMin)
        # past its last time throws. Re-solve without the sensealg: a failed return code is the status (the
        # re-solve's time is part of this call); if that solve succeeds, the error is genuine and propagates.
        fsol = _solve_at(prob, alg, kwargs, p)
        status_of(fsol.retcode) == "ok" && rethrow()
        return _failed_gradient(fsol, cell, calls0, start)
    end
    forward_done = time_ns()
    calls_forward = cell.calls[] - calls0
    status = status_of(sol.retcode)
    status == "ok" && !_saved_all(sol.t, kwargs.saveat) && (status = "solver_error")
    status == "ok" && !isfinite(l) && (status = "diverged")
    du0, dp = nothing, nothing
    if status == "ok"
        du0, dp = back((one(l), nothing))
    end
    stop = time_ns()
    st = _stats(sol)
    return (; status, retcode = retcode_name(sol.retcode), loss = Float64(l),
        du0 = _host(du0, length(u0)), dp = _host(dp, cell.nparams),
        nf = st.nf, naccept = st.naccept, nreject = st.nreject,
        calls_forward, calls_backward = cell.calls[] - calls0 - calls_forward,
        time_forward_s = _seconds(start, forward_done), time_total_s = _seconds(start, stop))
end

# `p` (any vector, e.g. a NumPy array through juliacall) as an array like the cell's parameters `q`
function _like(q::AbstractVector, p)
    length(p) == length(q) || throw(DimensionMismatch("p must have $(length(q)) entries; got $(length(p))"))
    return copyto!(similar(q), Vector{eltype(q)}(collect(p)))
end

# A forward solve at `p`; the cell's own parameters solve the problem as built (no `remake`).
_solve_at(prob, alg, kwargs, p) = p === prob.p ? solve(prob, alg; kwargs...) : solve(prob, alg; p = p, kwargs...)

function _failed_gradient(sol, cell::Cell, calls0::Integer, start)
    stop = time_ns()
    st = _stats(sol)
    return (; status = status_of(sol.retcode), retcode = retcode_name(sol.retcode), loss = NaN,
        du0 = zeros(Float64, length(cell.prob.u0)), dp = zeros(Float64, cell.nparams),
        nf = st.nf, naccept = st.naccept, nreject = st.nreject,
        calls_forward = cell.calls[] - calls0, calls_backward = 0,
        time_forward_s = _seconds(start, stop), time_total_s = _seconds(start, stop))
end

"""
    solve_cell(cell[, p]) -> NamedTuple

Forward solve only, at the cell's parameters or at `p` (any vector of the same length, copied to the
parameters' element type and device). Fields: `status`,
`retcode`, `ys` (`(n_state, n_save)` host `Matrix{Float64}`; zero columns when the solve failed), `t`, `nf`,
`naccept`, `nreject`, `calls`, `time_s`.
"""
solve_cell(cell::Cell) = Base.invokelatest(_solve, cell, cell.prob.p)
solve_cell(cell::Cell, p) = Base.invokelatest(_solve, cell, _like(cell.prob.p, p))

function _solve(cell::Cell, p)
    calls0 = cell.calls[]
    start = time_ns()
    sol = _solve_at(cell.prob, cell.alg, cell.kwargs, p)
    stop = time_ns()
    status = status_of(sol.retcode)
    saved = _saved_all(sol.t, cell.kwargs.saveat)
    ys = saved ? Matrix{Float64}(Array(Array(sol))) : zeros(Float64, length(cell.prob.u0), 0)
    status == "ok" && !saved && (status = "solver_error")
    status == "ok" && !all(isfinite, ys) && (status = "diverged")
    st = _stats(sol)
    return (; status, retcode = retcode_name(sol.retcode), ys, t = Vector{Float64}(Array(sol.t)),
        nf = st.nf, naccept = st.naccept, nreject = st.nreject, calls = cell.calls[] - calls0,
        time_s = _seconds(start, stop))
end

# ------------------------------------------------------------------------------------------ training

"""
    Training

The state of one training run on a cell (`make_training`): the cell, the current parameters `p` (the cell's
element type and device) and the Optimisers.jl state tree of `Optimisers.Adam`.
"""
mutable struct Training{C <: Cell, P, S}
    cell::C
    p::P
    state::S
end

"""
    make_training(cell; lr, b1, b2, eps) -> Training

A training run starting from the cell's parameters (a copy: `cell.prob.p` is never changed) with
`Optimisers.setup(Optimisers.Adam(lr, (b1, b2), eps), p)`; every hyperparameter is passed explicitly (crossode's
`Adam` settings, the same for `torch.optim.Adam` and `optax.adam`).

Optimisers.jl's `Adam` (`src/rules.jl`, `apply!`) updates `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2` and
subtracts `lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`: `eps` outside the square root of the
bias-corrected second moment, as `torch.optim.Adam` and `optax.adam(eps_root = 0)`; it computes in the parameters'
element type (`eps` converted to it) and orders the operations differently, so results agree to round-off only.
"""
function make_training(cell::Cell; lr::Real, b1::Real, b2::Real, eps::Real)
    cell.prob.p isa SciMLBase.NullParameters &&
        throw(ArgumentError("training needs parameters; this cell has none"))
    p = copy(cell.prob.p)
    rule = Optimisers.Adam(Float64(lr), (Float64(b1), Float64(b2)), Float64(eps))
    return Training(cell, p, Optimisers.setup(rule, p))
end

"""
    train_step!(tr) -> NamedTuple

One optimizer step: `gradient_cell(tr.cell, tr.p)`, then, only when its `status` is `"ok"` and the loss and `dp`
are finite, `Optimisers.update!(tr.state, tr.p, dp)`. A failed or non-finite gradient leaves parameters and
optimizer state unchanged and sets `status` (`"diverged"` for a non-finite `dp`). Fields: those of
`gradient_cell` (loss and `dp` at the parameters *before* the update) plus `grad_norm` (L2 norm of `dp`,
`NaN` when no gradient was computed) and `updated`.
"""
train_step!(tr::Training) = Base.invokelatest(_train_step!, tr)

function _train_step!(tr::Training)
    res = _gradient(tr.cell, tr.p)
    status = res.status
    grad_norm = status == "ok" ? sqrt(sum(abs2, res.dp)) : NaN
    status == "ok" && !(isfinite(res.loss) && isfinite(grad_norm)) && (status = "diverged")
    updated = false
    if status == "ok"
        g = copyto!(similar(tr.p), res.dp)  # the parameters' element type and device
        tr.state, tr.p = Optimisers.update!(tr.state, tr.p, g)
        updated = true
    end
    return merge(res, (; status, grad_norm, updated))
end

"""
    training_params(tr) -> Vector{Float64}

The current parameters of a training run, on the host.
"""
training_params(tr::Training) = Vector{Float64}(Array(tr.p))

"""
    versions() -> Dict{String, String}

Versions of Julia and of the packages this module drives (recorded with every crossode result).
"""
function versions()
    mods = ("SciMLBase" => SciMLBase, "SciMLSensitivity" => SciMLSensitivity,
        "OrdinaryDiffEqCore" => OrdinaryDiffEqCore, "OrdinaryDiffEqTsit5" => parentmodule(Tsit5),
        "OrdinaryDiffEqLowOrderRK" => parentmodule(RK4), "OrdinaryDiffEqHighOrderRK" => parentmodule(DP8),
        "OrdinaryDiffEqSDIRK" => parentmodule(Kvaerno5), "Zygote" => Zygote, "NaNMath" => NaNMath,
        "Optimisers" => Optimisers)
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

Compile the common paths once (Tsit5 with every sensealg, Kvaerno5 with `GaussAdjoint`, with the keywords crossode
passes for adaptive steps) on a 2-state problem; prints one line per combination and returns the number of
failures. Used by `crossode julia-setup`.
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
                reltol = 1.0e-6, dt0 = 1.0e-2, dtmin = 1.0e-14, dtmax = Inf, tstops = [0.5, 1.0],
                save_start = false, save_end = true, controller = "crossode",
                internalnorm = kind == "ForwardDiffSensitivity" ? "primal" : "default", isoutofdomain = "nonfinite")
            res = gradient_cell(cell)
            println(io, "  $alg + $kind(vjp=$vjp -> $(cell.vjp), checkpointing=$ckpt): $(res.status) in ",
                round(_seconds(t, time_ns()); digits = 1), " s")
        catch err
            failures += 1
            println(io, "  $alg + $kind(vjp=$vjp, checkpointing=$ckpt): FAILED: ", sprint(showerror, err))
        end
    end
    return failures
end

end # module CrossODE
